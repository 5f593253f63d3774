//! From one sample (registers, copied stack bytes, kernel return addresses)
//! to a stack of [`Frame`]s: user frames unwound with `framehop` from the
//! binaries' `.eh_frame` / `.debug_frame` (frame pointers only where those
//! say so, or where a module has none), module-relative so they can be
//! symbolized after the target is gone.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};

use super::{
    elf::{Bytes, ElfUnwindInfo, own_vdso},
    maps::{Mapping, read_maps},
};

/// One frame, before symbolization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frame {
    /// Put at the root of a stack whose unwinding stopped before its
    /// outermost frame (the copied stack ran out, or unwind data was
    /// missing): shown, never silent.
    Truncated,
    /// A user address in module `module` ([`Modules`]), as the file states
    /// it (return addresses minus one, so they fall in the call).
    User { module: u32, svma: u64 },
    /// A user address in no file mapping (JIT code, or a mapping gone).
    Unmapped(u64),
    /// A kernel address.
    Kernel(u64),
    /// The whole stack of a block whose stack was not sent (over the
    /// off-CPU budget, or the ring was full): its time is still counted.
    Unsampled,
}

/// Every file that appeared in a stack, by path; indices are stable. Each
/// file is kept open from the moment it is first seen, so it can be
/// symbolized after the target exits, was deleted, or lives in another
/// mount namespace.
#[derive(Default)]
pub struct Modules {
    pub paths: Vec<String>,
    pub files: Vec<Option<std::fs::File>>,
    index: HashMap<String, u32>,
}

impl Modules {
    pub fn id(&mut self, path: &str, open: impl FnOnce() -> Option<std::fs::File>) -> u32 {
        if let Some(&i) = self.index.get(path) {
            return i;
        }
        let i = self.paths.len() as u32;
        self.paths.push(path.to_string());
        self.files.push(open());
        self.index.insert(path.to_string(), i);
        i
    }
}

/// A mapping placed: its module and load bias.
struct Placed {
    start: u64,
    end: u64,
    module: u32,
    bias: u64,
}

/// The target's address space as last read: mappings and an unwinder.
struct AddressSpace {
    tgid: u32,
    execs: u32,
    placed: Vec<Placed>,
    unwinder: UnwinderX86_64<Bytes>,
    /// The mappings it was built from, to tell a reload that changed nothing.
    mappings: Vec<Mapping>,
    read_at: Instant,
    /// How long after `read_at` a rate-limited reload is due: doubles at
    /// each reload that finds the mappings unchanged.
    reload_every: Duration,
}

/// Most frames kept per stack.
pub const MAX_FRAMES: usize = 1024;
/// Mappings are read again at most this often when an address falls
/// outside them on a page already known to stay outside them, or a walk
/// stops early; at once for an address on a page not seen unplaced yet;
/// and at every exec. Each such reload that finds nothing new doubles the
/// wait, up to [`RELOAD_EVERY_MAX`]: a target with stacks that never
/// unwind whole (a thread blocked in code without unwind data) had its
/// mappings read five times a second, a twentieth of the profiling
/// thread's CPU.
const RELOAD_EVERY: Duration = Duration::from_millis(200);
const RELOAD_EVERY_MAX: Duration = Duration::from_millis(6400);
/// Pages of code addresses no reload placed, remembered so that they do not
/// make the mappings be read again at every sample (JIT code).
const MAX_UNPLACED_PAGES: usize = 4096;
const PAGE: u64 = 4096;

/// Unwinds samples of one target (which may exec).
pub struct StackWalker {
    pub modules: Modules,
    /// The vdso image (the same in every process).
    pub vdso: Option<Vec<u8>>,
    elf: HashMap<String, Option<ElfUnwindInfo>>,
    space: Option<AddressSpace>,
    cache: CacheX86_64,
    /// Pages (address / [`PAGE`]) holding addresses that a reload did not
    /// place, since the last exec.
    unplaced_pages: HashSet<u64>,
    /// The last walk's addresses (a buffer reused by every walk).
    addrs: Vec<u64>,
}

/// A sample's user part, as the kernel copied it.
pub struct UserRegsAndStack<'a> {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub stack_base: u64,
    pub stack: &'a [u8],
}

impl Default for StackWalker {
    fn default() -> Self {
        StackWalker {
            modules: Modules::default(),
            elf: HashMap::new(),
            space: None,
            cache: CacheX86_64::new(),
            vdso: own_vdso(),
            unplaced_pages: HashSet::new(),
            addrs: Vec::with_capacity(128),
        }
    }
}

impl StackWalker {
    /// Appends the user frames of a sample to `out`, outermost first, with
    /// [`Frame::Truncated`] first when the walk did not reach the root.
    pub fn user_frames(
        &mut self,
        tgid: u32,
        execs: u32,
        s: &UserRegsAndStack,
        out: &mut Vec<Frame>,
    ) {
        let stale = self.space.as_ref().is_none_or(|a| a.tgid != tgid || a.execs != execs);
        if stale {
            self.unplaced_pages.clear();
            self.reload(tgid, execs);
        }
        // The walk's buffer, kept from sample to sample (no allocation).
        let mut addrs = std::mem::take(&mut self.addrs);
        let mut complete = self.walk(s, &mut addrs);
        // An address on a page no reload has failed to place is new code (a
        // library mapped since the last read: right after an exec the first
        // read may come before the loader mapped libc): read the mappings
        // again at once, or the walk stops there. Pages that stay unplaced
        // (JIT code, a mapping gone) fall back to the rate limit.
        let new_unknown = addrs
            .iter()
            .any(|&a| self.place(a).is_none() && !self.unplaced_pages.contains(&(a / PAGE)))
            && self.unplaced_pages.len() < MAX_UNPLACED_PAGES;
        let unknown = addrs.iter().any(|&a| self.place(a).is_none());
        let due = self.space.as_ref().is_some_and(|a| a.read_at.elapsed() >= a.reload_every);
        if new_unknown || ((unknown || !complete) && due) {
            self.reload(tgid, execs);
            complete = self.walk(s, &mut addrs);
            for &a in &addrs {
                if self.place(a).is_none() {
                    self.unplaced_pages.insert(a / PAGE);
                }
            }
        }
        if !complete {
            out.push(Frame::Truncated);
        }
        out.extend(addrs.iter().rev().map(|&a| match self.place(a) {
            Some((module, svma)) => Frame::User { module, svma },
            None => Frame::Unmapped(a),
        }));
        self.addrs = addrs;
    }

    /// Lookup addresses into `addrs`, innermost first; whether the walk
    /// reached the outermost frame.
    fn walk(&mut self, s: &UserRegsAndStack, addrs: &mut Vec<u64>) -> bool {
        addrs.clear();
        let Some(space) = &self.space else {
            addrs.push(s.ip);
            return false;
        };
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let off = addr.checked_sub(s.stack_base).ok_or(())? as usize;
            let bytes = s.stack.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let regs = UnwindRegsX86_64::new(s.ip, s.sp, s.bp);
        let mut it = space.unwinder.iter_frames(s.ip, regs, &mut self.cache, &mut read_stack);
        loop {
            match it.next() {
                Ok(Some(frame)) if addrs.len() < MAX_FRAMES => addrs.push(lookup_address(frame)),
                Ok(Some(_)) => return false,
                Ok(None) | Err(framehop::Error::ReturnAddressIsNull) => return true,
                Err(_) => return false,
            }
        }
    }

    /// Module and stated address of a user address.
    fn place(&self, addr: u64) -> Option<(u32, u64)> {
        let space = self.space.as_ref()?;
        let i = space.placed.partition_point(|p| p.start <= addr).checked_sub(1)?;
        let p = &space.placed[i];
        (addr < p.end).then(|| (p.module, addr.wrapping_sub(p.bias)))
    }

    /// Reads the target's mappings again and rebuilds the unwinder (unwind
    /// data of files already seen is reused) if they changed. Keeps the old
    /// view when `/proc` is gone (the target exited; its last samples still
    /// unwind).
    fn reload(&mut self, tgid: u32, execs: u32) {
        let mappings = read_maps(tgid);
        if let Some(a) = &mut self.space
            && a.tgid == tgid
            && a.execs == execs
            && mappings.as_ref().is_ok_and(|m| *m == a.mappings)
        {
            a.read_at = Instant::now();
            a.reload_every = (a.reload_every * 2).min(RELOAD_EVERY_MAX);
            return;
        }
        let Ok(mappings) = mappings else {
            if let Some(a) = &mut self.space {
                a.read_at = Instant::now();
            }
            return;
        };
        let mut unwinder = UnwinderX86_64::new();
        let mut placed = Vec::new();
        for m in &mappings {
            let Some(info) = self.unwind_info(tgid, m) else { continue };
            let Some(bias) = info.bias(m.start, m.offset) else { continue };
            let section_info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: info.text.as_ref().map(|s| s.svma.clone()),
                text: info.text.as_ref().map(|s| s.data.clone()),
                got_svma: info.got.clone(),
                eh_frame_svma: info.eh_frame.as_ref().map(|s| s.svma.clone()),
                eh_frame: info.eh_frame.as_ref().map(|s| s.data.clone()),
                eh_frame_hdr_svma: info.eh_frame_hdr.as_ref().map(|s| s.svma.clone()),
                eh_frame_hdr: info.eh_frame_hdr.as_ref().map(|s| s.data.clone()),
                debug_frame: info.debug_frame.as_ref().map(|s| s.data.clone()),
                ..Default::default()
            };
            unwinder.add_module(Module::new(m.path.clone(), m.start..m.end, bias, section_info));
            let module = self.modules.id(&m.path, || {
                file_candidates(tgid, m).iter().find_map(|p| std::fs::File::open(p).ok())
            });
            placed.push(Placed { start: m.start, end: m.end, module, bias });
        }
        placed.sort_by_key(|p| p.start);
        self.space = Some(AddressSpace {
            tgid,
            execs,
            placed,
            unwinder,
            mappings,
            read_at: Instant::now(),
            reload_every: RELOAD_EVERY,
        });
    }

    /// Unwind data of a mapping's file, read once per path.
    fn unwind_info(&mut self, tgid: u32, m: &Mapping) -> Option<&ElfUnwindInfo> {
        if !self.elf.contains_key(&m.path) {
            let info = if m.path == "[vdso]" {
                self.vdso.as_deref().and_then(|v| ElfUnwindInfo::parse(v).ok())
            } else {
                file_candidates(tgid, m).iter().find_map(|p| ElfUnwindInfo::read(p).ok())
            };
            self.elf.insert(m.path.clone(), info);
        }
        self.elf.get(&m.path)?.as_ref()
    }
}

/// Where a mapped file can be read: through the mapping itself (works for
/// a deleted file and in another mount namespace), then through the
/// target's root, then by path.
pub fn file_candidates(tgid: u32, m: &Mapping) -> Vec<PathBuf> {
    vec![
        PathBuf::from(format!("/proc/{tgid}/map_files/{:x}-{:x}", m.start, m.end)),
        PathBuf::from(format!("/proc/{tgid}/root{}", m.path)),
        PathBuf::from(&m.path),
    ]
}

/// The address to look up for a frame: a return address points after the
/// call, so one byte back is inside it.
fn lookup_address(frame: FrameAddress) -> u64 {
    match frame {
        FrameAddress::InstructionPointer(a) => a,
        FrameAddress::ReturnAddress(a) => a.get() - 1,
    }
}

/// Kernel frames of a sample, outermost first.
pub fn kernel_frames(stack: &[u64], out: &mut Vec<Frame>) {
    out.extend(stack.iter().rev().filter(|&&a| a != 0).map(|&a| Frame::Kernel(a)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::symbols::Symbolizer;

    /// Copies this thread's registers and the top of its stack (from the
    /// base of `sp`'s page to at most `above_sp` bytes past `sp`), like the
    /// kernel side does, and unwinds them.
    #[inline(never)]
    fn unwind_here(walker: &mut StackWalker, above_sp: u64) -> Vec<Frame> {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers.
        unsafe {
            std::arch::asm!("lea {ip}, [rip]", "mov {sp}, rsp", "mov {bp}, rbp",
                ip = out(reg) ip, sp = out(reg) sp, bp = out(reg) bp);
        }
        let base = sp & !4095;
        // Up to 16 KiB, within the stack's mapping (like the kernel side,
        // which stops at the first page it cannot read).
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let end = maps
            .lines()
            .filter_map(|l| l.split(' ').next()?.split_once('-'))
            .map(|(a, b)| {
                (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap())
            })
            .find(|&(a, b)| a <= sp && sp < b)
            .unwrap()
            .1;
        let len = (end - base).min(sp - base + above_sp) as usize;
        // SAFETY: [base, base + len) is inside this thread's stack mapping.
        let stack = unsafe { std::slice::from_raw_parts(base as *const u8, len) }.to_vec();
        let regs = UserRegsAndStack { ip, sp, bp, stack_base: base, stack: &stack };
        let mut out = Vec::new();
        walker.user_frames(std::process::id(), 0, &regs, &mut out);
        out
    }

    #[test]
    fn unwinds_this_thread_to_its_start() {
        let mut walker = StackWalker::default();
        let frames = unwind_here(&mut walker, 16384);
        let mut sym = Symbolizer::new(
            &walker.modules,
            walker.vdso.as_deref(),
            std::path::Path::new(crate::profile::DEFAULT_DEBUG_DIR),
        );
        let names: Vec<String> = frames.iter().flat_map(|&f| sym.names(f).to_vec()).collect();
        assert_ne!(frames[0], Frame::Truncated, "{names:#?}");
        assert!(names.iter().any(|n| n.ends_with("unwind_here")), "{names:#?}");
        // Through the test harness (this test function itself may be
        // inlined into it) to the thread's start.
        assert!(names.iter().any(|n| n.starts_with("test::run_test")), "{names:#?}");
        assert!(names.iter().any(|n| n.contains("thread_start")), "{names:#?}");
    }

    #[test]
    fn reloads_that_find_the_mappings_unchanged_back_off() {
        let mut walker = StackWalker::default();
        let every = |w: &StackWalker| w.space.as_ref().unwrap().reload_every;
        let make_due = |w: &mut StackWalker| {
            let space = w.space.as_mut().unwrap();
            space.read_at = Instant::now().checked_sub(Duration::from_secs(10)).unwrap();
        };
        // Nothing past `sp`: the walk never reaches the root, so each time
        // it is due the mappings are read.
        let short = |w: &mut StackWalker| unwind_here(w, 0);
        assert_eq!(short(&mut walker)[0], Frame::Truncated);
        assert_eq!(every(&walker), RELOAD_EVERY);
        for ms in [400, 800, 1600, 3200, 6400, 6400] {
            make_due(&mut walker);
            assert_eq!(short(&mut walker)[0], Frame::Truncated);
            assert_eq!(every(&walker), Duration::from_millis(ms));
        }
        // Mappings that changed are read into a new unwinder, and the wait
        // starts over.
        walker.space.as_mut().unwrap().mappings.clear();
        make_due(&mut walker);
        short(&mut walker);
        assert_eq!(every(&walker), RELOAD_EVERY);
        assert!(!walker.space.as_ref().unwrap().mappings.is_empty());
    }
}
