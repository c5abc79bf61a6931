//! The takeover's wire: one JSON message per line over a Unix stream
//! socket, a message optionally carrying file descriptors (SCM_RIGHTS). The
//! two sides take turns, so at most one message is in flight each way.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// The most descriptors one message carries (the listeners: public, admin,
/// status, and room for more).
pub const MAX_FDS: usize = 8;
/// A message longer than this is not one of ours.
const MAX_LINE: usize = 64 * 1024;

/// The steps of a takeover, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Message {
    /// New to old: "I am starting on your data directory; stop writing it".
    Prepare { pid: u32 },
    /// Old to new: its background tasks are stopped and their state saved.
    Frozen { pid: u32 },
    /// New to old: restored and probed; send the listeners.
    Ready,
    /// Old to new: the listeners, in this order, as the message's fds.
    Sockets { names: Vec<String> },
    /// New to old: accepting on them; stop accepting and drain.
    Serving { pid: u32 },
}

/// One end of the takeover socket.
pub struct Wire {
    stream: UnixStream,
    /// Bytes received past the last full line.
    pending: Vec<u8>,
    /// Descriptors received with the bytes in `pending`.
    fds: Vec<OwnedFd>,
}

impl Wire {
    pub fn new(stream: UnixStream) -> Wire {
        Wire {
            stream,
            pending: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// Sends `message`, with `fds` attached to its first byte.
    pub async fn send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut line = serde_json::to_vec(message).expect("takeover messages serialize");
        line.push(b'\n');
        let mut sent = 0;
        while sent < line.len() {
            self.stream.writable().await?;
            let attach = if sent == 0 { fds } else { &[] };
            match self.stream.try_io(Interest::WRITABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !attach.is_empty() && !control.push(SendAncillaryMessage::ScmRights(attach)) {
                    return Err(io::Error::other("too many descriptors for one message"));
                }
                rustix::net::sendmsg(
                    &self.stream,
                    &[IoSlice::new(&line[sent..])],
                    &mut control,
                    SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            }) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next message and the descriptors that came with it. The end of
    /// the stream is `UnexpectedEof`: the other side went away.
    pub async fn recv(&mut self) -> io::Result<(Message, Vec<OwnedFd>)> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let message = serde_json::from_slice(&line[..end]).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("not a takeover message: {e}"),
                    )
                })?;
                return Ok((message, std::mem::take(&mut self.fds)));
            }
            if self.pending.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a takeover message longer than 64 KiB",
                ));
            }
            self.stream.readable().await?;
            let mut buf = [0u8; 4096];
            let received = self.stream.try_io(Interest::READABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let msg = rustix::net::recvmsg(
                    &self.stream,
                    &mut [IoSliceMut::new(&mut buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = message {
                        fds.extend(received);
                    }
                }
                Ok((msg.bytes, fds))
            });
            match received {
                Ok((0, _)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the other process closed the takeover socket",
                    ));
                }
                Ok((n, fds)) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    self.fds.extend(fds);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn a_message_carries_its_descriptors_to_the_other_process() {
        // Arrange: a file whose contents identify the descriptor.
        let (a, b) = UnixStream::pair().expect("a socket pair");
        let (left, mut right) = (Wire::new(a), Wire::new(b));
        let mut file = tempfile::tempfile().expect("a temp file");
        file.write_all(b"the same file").expect("write");
        let names = Message::Sockets {
            names: vec!["public".into()],
        };

        // Act
        left.send(&names, &[file.as_fd()]).await.expect("send");
        left.send(&Message::Ready, &[]).await.expect("send");
        let (first, mut fds) = right.recv().await.expect("recv");
        let (second, none) = right.recv().await.expect("recv");

        // Assert
        assert_eq!(first, names);
        assert_eq!((second, none.len()), (Message::Ready, 0));
        assert_eq!(fds.len(), 1);
        let mut received = std::fs::File::from(fds.remove(0));
        received.rewind().expect("rewind");
        let mut text = String::new();
        received.read_to_string(&mut text).expect("read");
        assert_eq!(text, "the same file");
    }

    #[tokio::test]
    async fn the_other_side_going_away_is_an_eof() {
        let (a, b) = UnixStream::pair().expect("a socket pair");
        drop(a);
        let err = Wire::new(b).recv().await.expect_err("nothing comes");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
