//! Reading kernel memory and configuration, and writing map values, the way
//! the hot programs need it: plain loads through BTF-typed pointers, volatile
//! stores that LLVM cannot merge into `memset` calls. Used by every family.

/// Reads a `const volatile` global whole (the compiler must not fold its
/// compile-time value).
#[inline(always)]
pub fn read_const<T: Copy>(v: &'static T) -> &'static T {
    // A volatile read of a pointer to it: the loads that follow go to the
    // map user space wrote, not to the compile-time initialiser.
    unsafe { &*core::ptr::read_volatile(&(v as *const T)) }
}

/// Reads a `T` at `offset` bytes into a kernel object through
/// `bpf_probe_read_kernel` (for pointers the verifier knows no type of).
#[inline(always)]
pub fn read_field<T>(base: u64, offset: usize) -> Option<T> {
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel((base as *const u8).add(offset) as *const T) }
        .ok()
}

/// Loads a `T` at `offset` bytes into a kernel object reached through a
/// BTF-typed pointer (a `tp_btf` argument): a plain load, no helper. The
/// offset comes from `config::OFFSETS`, a constant to the verifier, so
/// `base + offset` keeps its BTF type and the load is checked against the
/// struct's layout (a fault reads 0).
///
/// # Safety
/// `base` must be such a pointer and `offset` that of a `T` field in it.
#[inline(always)]
pub unsafe fn load_field<T: Copy>(base: *const u8, offset: usize) -> T {
    unsafe { core::ptr::read(base.add(offset) as *const T) }
}

/// One store that the compiler keeps as it is. Plain stores of zeroes to
/// neighbouring fields are merged by LLVM into a `memset` call, which on BPF
/// is a call to a byte-at-a-time loop (and the 8-byte loads of those fields
/// that follow then miss store forwarding): on the hottest path of all.
#[inline(always)]
pub fn put<T>(field: &mut T, value: T) {
    unsafe { core::ptr::write_volatile(field, value) }
}

/// Zeroes `*v` a 64-bit word at a time with volatile stores, which the
/// compiler cannot merge into a `memset` call (see [`put`]). `T`'s size must
/// be a multiple of 8, and `v` 8-byte aligned (map values and stack slots
/// are).
#[inline(always)]
pub fn zero_words<T>(v: *mut T) {
    const { assert!(size_of::<T>() % 8 == 0) };
    let words = v as *mut u64;
    for i in 0..size_of::<T>() / 8 {
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}
