//! A response body passed through with a fault part-way: cut (the connection closed, or reset
//! with `SO_LINGER` 0 so the kernel sends RST), or paused.

use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;

use super::State;
use super::schedule::FaultKind;

/// What happens to the body, at which byte.
#[derive(Clone, Copy, Debug)]
pub enum BodyPlan {
    Pass,
    Cut { at: u64, rst: bool },
    Stall { at: u64, pause: Duration },
}

pub struct FaultBody {
    inner: Incoming,
    plan: BodyPlan,
    sent: u64,
    /// The client connection's socket (a duplicate of its descriptor), to reset.
    socket: Arc<OwnedFd>,
    state: Arc<State>,
    /// Bytes held back while the body pauses, or to send before a cut.
    held: Option<Bytes>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The cut is due once `held` is sent.
    cut_next: bool,
}

impl FaultBody {
    pub fn new(inner: Incoming, plan: BodyPlan, socket: Arc<OwnedFd>, state: Arc<State>) -> Self {
        FaultBody {
            inner,
            plan,
            sent: 0,
            socket,
            state,
            held: None,
            sleep: None,
            cut_next: false,
        }
    }

    fn cut(&mut self) -> std::io::Error {
        let BodyPlan::Cut { rst, .. } = self.plan else {
            unreachable!("cut without a cut plan")
        };
        if rst {
            set_reset_on_close(&self.socket);
            self.state.count(FaultKind::ResetMidBody);
        } else {
            self.state.count(FaultKind::TruncatedBody);
        }
        self.plan = BodyPlan::Pass;
        std::io::Error::other("injected: the body was cut")
    }
}

/// Makes the socket's close send RST (linger on, zero seconds). The option belongs to the
/// socket, not to the descriptor: it holds for the connection's own descriptor, whose close
/// (with the duplicate's, as the connection ends) sends the RST.
pub(super) fn set_reset_on_close(socket: &OwnedFd) {
    let _ = rustix::net::sockopt::set_socket_linger(socket, Some(Duration::ZERO));
}

impl Body for FaultBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        if let Some(bytes) = this.held.take() {
            this.sent += bytes.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        if this.cut_next {
            this.cut_next = false;
            return Poll::Ready(Some(Err(this.cut())));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(std::io::Error::other(e)))),
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => return Poll::Ready(Some(Ok(frame))),
        };
        let end = this.sent + data.len() as u64;
        match this.plan {
            BodyPlan::Cut { at, .. } if end > at => {
                let keep = (at - this.sent) as usize;
                if keep == 0 {
                    return Poll::Ready(Some(Err(this.cut())));
                }
                this.cut_next = true;
                this.sent += keep as u64;
                Poll::Ready(Some(Ok(Frame::data(data.slice(..keep)))))
            }
            BodyPlan::Stall { at, pause } if end > at => {
                this.plan = BodyPlan::Pass;
                this.state.count(FaultKind::StalledBody);
                let keep = (at - this.sent) as usize;
                this.held = Some(data.slice(keep..));
                this.sleep = Some(Box::pin(tokio::time::sleep(pause)));
                this.sent += keep as u64;
                if keep > 0 {
                    Poll::Ready(Some(Ok(Frame::data(data.slice(..keep)))))
                } else {
                    // Nothing to send first: wait now.
                    self.poll_frame(cx)
                }
            }
            _ => {
                this.sent = end;
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && !self.cut_next && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
