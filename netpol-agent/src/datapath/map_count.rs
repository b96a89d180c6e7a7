//! Counting the entries of a BPF hash map in batches (`BPF_MAP_LOOKUP_BATCH`): 33 system calls
//! for a full conntrack map (about 70 ms here), where a walk key by key (`BPF_MAP_GET_NEXT_KEY`)
//! makes one per entry (262 144, about 220 ms, every time the fill level is counted).
//! aya has no batch operations, so this is the agent's one direct `bpf(2)` call.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Entries read per system call.
const BATCH: u32 = 8192;
/// `BPF_MAP_LOOKUP_BATCH` of `enum bpf_cmd` (include/uapi/linux/bpf.h; Linux 5.6).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`: what `BPF_MAP_LOOKUP_BATCH` reads, and writes back
/// (`count`, and in `out_batch` where the next call goes on). The kernel takes a shorter
/// attribute than its own union and reads the rest as zero.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Why a map could not be counted.
#[derive(Debug, thiserror::Error)]
#[error("BPF_MAP_LOOKUP_BATCH on map fd {fd}: {source}")]
pub struct CountError {
    fd: i32,
    source: std::io::Error,
}

/// The number of entries in the hash map `fd` (not a per-CPU one) whose keys and values are
/// `key_size` and `value_size` bytes. A map that changes meanwhile is counted as it was at some
/// point of the walk, bucket by bucket.
pub fn count_entries(fd: BorrowedFd<'_>, key_size: usize, value_size: usize) -> Result<usize, CountError> {
    let mut keys = vec![0u8; BATCH as usize * key_size];
    let mut values = vec![0u8; BATCH as usize * value_size];
    // A hash map's position is a bucket number (`u32`; room for more costs nothing): 0 is the
    // first bucket, where a walk starts.
    let mut position = 0u64;
    let mut next = 0u64;
    let mut total = 0usize;
    loop {
        let mut attr = BatchAttr {
            in_batch: std::ptr::addr_of!(position) as u64,
            out_batch: std::ptr::addr_of_mut!(next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is a valid `batch` attribute of its own size; the buffers it points to
        // hold `BATCH` keys and values of the sizes given and outlive the call, as do `position`
        // and `next`.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, std::ptr::addr_of_mut!(attr), std::mem::size_of::<BatchAttr>()) };
        if rc < 0 {
            let source = std::io::Error::last_os_error();
            // The end of the map; `count` holds what this last call read.
            if source.raw_os_error() == Some(libc::ENOENT) {
                return Ok(total + attr.count as usize);
            }
            return Err(CountError { fd: fd.as_raw_fd(), source });
        }
        total += attr.count as usize;
        position = next;
    }
}
