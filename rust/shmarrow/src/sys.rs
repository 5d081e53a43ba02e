//! The kernel resources: one RAII type per resource (the read-only mapping; fds are `OwnedFd`),
//! and the socket calls the protocol needs.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::SealFlags;
use rustix::io::Errno;
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::error::{Error, Result};

/// A shared mapping of a whole memfd (read-only for consumers), unmapped when dropped.
#[derive(Debug)]
pub(crate) struct Mapping {
    data: NonNull<u8>,
    len: usize,
    inode: u64,
}

// The mapping never changes address; a consumer's is read-only, and the producer writes only
// blocks no consumer was told of yet: any thread may read it.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `[0, st_size)` of `fd` read-only; the size comes from fstat, never from a message.
    pub(crate) fn map_read_only(fd: BorrowedFd<'_>) -> Result<Mapping> {
        Mapping::map(fd, ProtFlags::READ)
    }

    /// Maps all of `fd` readable and writable (the producer's ring, before it is sealed).
    pub(crate) fn map_writable(fd: BorrowedFd<'_>) -> Result<Mapping> {
        Mapping::map(fd, ProtFlags::READ | ProtFlags::WRITE)
    }

    fn map(fd: BorrowedFd<'_>, protection: ProtFlags) -> Result<Mapping> {
        let raw = fd.as_raw_fd();
        let stat = rustix::fs::fstat(fd).map_err(|e| Error::io(format!("fstat(fd {raw})"), e))?;
        let len = usize::try_from(stat.st_size).unwrap_or(0);
        if len == 0 {
            return Err(Error::Protocol(format!("memfd fd {raw} is empty")));
        }
        // SAFETY: a new mapping at an address the kernel picks; nothing else refers to it.
        let data = unsafe { mmap(std::ptr::null_mut(), len, protection, MapFlags::SHARED, fd, 0) }
            .map_err(|e| Error::io(format!("mmap(fd {raw}, {len} bytes, {protection:?})"), e))?;
        Ok(Mapping {
            data: NonNull::new(data.cast()).expect("mmap returned a mapping"),
            len,
            inode: stat.st_ino,
        })
    }

    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.data
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    pub(crate) fn inode(&self) -> u64 {
        self.inode
    }
    /// The mapped bytes. The producer may still write the ring (not a sealed memfd): callers copy
    /// what they check before checking it.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is len readable bytes for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.len) }
    }
    pub(crate) fn contains(&self, ptr: *const u8, len: usize) -> bool {
        let start = self.data.as_ptr() as usize;
        let p = ptr as usize;
        p >= start && len <= self.len && p - start <= self.len - len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in map_read_only; every Buffer into it holds this object.
        let _ = unsafe { munmap(self.data.as_ptr().cast(), self.len) };
    }
}

pub(crate) const SEALS_HANDOVER: SealFlags =
    SealFlags::SHRINK.union(SealFlags::GROW).union(SealFlags::WRITE).union(SealFlags::SEAL);

/// The seals of a memfd (EINVAL: not a memfd).
pub(crate) fn seals(fd: BorrowedFd<'_>) -> Result<SealFlags> {
    let raw = fd.as_raw_fd();
    rustix::fs::fcntl_get_seals(fd).map_err(|e| match e {
        Errno::INVAL => Error::Protocol(format!("fd {raw} is not a memfd (F_GET_SEALS: EINVAL)")),
        e => Error::io(format!("fcntl(fd {raw}, F_GET_SEALS)"), e),
    })
}

/// Names of the seals, as `shmarrow recv --json` prints them.
pub(crate) fn seal_names(seals: SealFlags) -> String {
    let names = [
        (SealFlags::SEAL, "F_SEAL_SEAL"),
        (SealFlags::SHRINK, "F_SEAL_SHRINK"),
        (SealFlags::GROW, "F_SEAL_GROW"),
        (SealFlags::WRITE, "F_SEAL_WRITE"),
        (SealFlags::FUTURE_WRITE, "F_SEAL_FUTURE_WRITE"),
    ];
    let list: Vec<&str> =
        names.iter().filter(|(bit, _)| seals.contains(*bit)).map(|(_, name)| *name).collect();
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join("|")
    }
}

/// A connected AF_UNIX socket of `kind`; `@name` is the abstract namespace.
pub(crate) fn connect(address: &str, kind: SocketType) -> std::result::Result<OwnedFd, Errno> {
    let addr = match address.strip_prefix('@') {
        Some(name) => SocketAddrUnix::new_abstract_name(name.as_bytes())?,
        None => SocketAddrUnix::new(address)?,
    };
    let fd = rustix::net::socket_with(AddressFamily::UNIX, kind, SocketFlags::CLOEXEC, None)?;
    rustix::net::connect(&fd, &addr)?;
    Ok(fd)
}

/// A listening AF_UNIX socket of `kind`, non-blocking; a socket file gets mode 0600.
pub(crate) fn listen(address: &str, kind: SocketType) -> Result<OwnedFd> {
    let fail = |what: &str, e: Errno| Error::io(format!("{what}('{address}')"), e);
    let addr = match address.strip_prefix('@') {
        Some(name) => SocketAddrUnix::new_abstract_name(name.as_bytes()),
        None => SocketAddrUnix::new(address),
    }
    .map_err(|e| fail("socket address", e))?;
    let flags = SocketFlags::CLOEXEC | SocketFlags::NONBLOCK;
    let fd = rustix::net::socket_with(AddressFamily::UNIX, kind, flags, None)
        .map_err(|e| fail("socket", e))?;
    rustix::net::bind(&fd, &addr).map_err(|e| fail("bind", e))?;
    if !address.starts_with('@') {
        let owner_only = rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR;
        rustix::fs::chmod(address, owner_only).map_err(|e| fail("chmod", e))?;
    }
    rustix::net::listen(&fd, 64).map_err(|e| fail("listen", e))?;
    Ok(fd)
}

/// Sends one datagram with `fds` without blocking: false when the socket is full.
pub(crate) fn try_send_fds(
    fd: BorrowedFd<'_>,
    message: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<bool> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Error::Protocol(format!("{} fds do not fit one message", fds.len())));
    }
    loop {
        match rustix::net::sendmsg(
            fd,
            &[IoSlice::new(message)],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Ok(false),
            Err(e) => return Err(Error::io(format!("sendmsg(fd {})", fd.as_raw_fd()), e)),
        }
    }
}

/// Waits until `fd` is readable (or hung up); false when `timeout` passed first (None: forever).
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let spec =
            left.map(|l| Timespec { tv_sec: l.as_secs() as i64, tv_nsec: l.subsec_nanos() as i64 });
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, spec.as_ref()) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(Error::io(format!("poll(fd {})", fd.as_raw_fd()), e)),
        }
    }
}

/// One received datagram: its length (0: the peer closed) and the fds that came with it.
pub(crate) struct Received {
    pub(crate) bytes: usize,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Room for more fds than any message carries, so that a peer sending too many is detected.
const FD_ROOM: usize = 8;

/// One recvmsg without blocking: None when nothing is waiting. Every fd arrives CLOEXEC; a
/// message that lost fds (MSG_CTRUNC) or bytes (MSG_TRUNC) is refused, its fds closed.
pub(crate) fn receive(fd: BorrowedFd<'_>, buffer: &mut [u8]) -> Result<Option<Received>> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(FD_ROOM))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let raw = fd.as_raw_fd();
    let received = loop {
        let mut iov = [IoSliceMut::new(buffer)];
        match rustix::net::recvmsg(
            fd,
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        ) {
            Ok(r) => break r,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(Error::io(format!("recvmsg(fd {raw})"), e)),
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received_fds) = message {
            fds.extend(received_fds);
        }
    }
    if received.flags.contains(ReturnFlags::CTRUNC) {
        return Err(Error::Protocol(format!(
            "a message on fd {raw} carried more fds than the {FD_ROOM} it may (MSG_CTRUNC)"
        )));
    }
    if received.flags.contains(ReturnFlags::TRUNC) {
        return Err(Error::Protocol(format!(
            "a message on fd {raw} is longer than {} bytes",
            buffer.len()
        )));
    }
    Ok(Some(Received { bytes: received.bytes, fds }))
}

/// Sends one datagram without blocking: false when the socket is full.
pub(crate) fn try_send(fd: BorrowedFd<'_>, message: &[u8]) -> Result<bool> {
    try_send_fds(fd, message, &[])
}
