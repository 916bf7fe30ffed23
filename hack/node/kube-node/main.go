// kube-node: kubelet, kube-scheduler and kube-controller-manager in one multi-call binary, for
// the real-node test tier (hack/test-assets.sh builds it from the k8s.io/kubernetes module).
// The three share most of their code: one binary holds it once (119 MB instead of 278 MB for
// three; the compile is shared through Go's build cache either way).
//
// The component is the name it is called by (a symlink named kubelet, kube-scheduler or
// kube-controller-manager) or, failing that, the first argument: `kube-node kubelet --help`.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
	_ "time/tzdata" // CronJob time zones, as in kube-controller-manager's own main
)

var components = map[string]func() *cobra.Command{
	"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	newCommand, ok := components[name]
	if !ok && len(args) > 0 {
		name = args[0]
		args = args[1:]
		newCommand, ok = components[name]
	}
	if !ok {
		fmt.Fprintln(os.Stderr, "usage: kube-node kubelet|kube-scheduler|kube-controller-manager [flags] (or call it by one of those names)")
		os.Exit(2)
	}
	command := newCommand()
	command.SetArgs(args)
	os.Exit(cli.Run(command))
}
