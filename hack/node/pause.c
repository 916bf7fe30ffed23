/* The sandbox ("pause") container of the real-node test tier: it holds the pod's namespaces and
 * does nothing else. PID 1 of the sandbox: it sleeps until SIGINT or SIGTERM and reaps the
 * zombies that are reparented to it. Built static (gcc -static) by sitecache-devtools' node
 * module, so that its image needs no library. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction sa = {0};
  sa.sa_handler = stop;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sa.sa_handler = reap;
  sa.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);
  for (;;) pause();
  return 0;
}
