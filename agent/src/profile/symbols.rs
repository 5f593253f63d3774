//! Names for frames, after sampling: ELF symbol tables and DWARF (inlined
//! functions become frames of their own), Rust and C++ demangled; the
//! kernel's from `/proc/kallsyms`. A stripped module is named from the
//! symbol table of its debug file when the distribution's debug package
//! installed one (found by build-id under `--debug-dir`'s `.build-id`,
//! `/usr/lib/debug` by default, as gdb and perf do). A frame
//! with no symbol keeps its place as `module+0xADDRESS` (the address as the
//! file states it).
//!
//! A function the compiler or linker folded with identical ones (LLVM's
//! function merging, the linker's ICF: in Rust, `TcpStream::read`,
//! `UdpSocket::recv` and `UnixDatagram::recv` are one piece of code, and so
//! are many monomorphs of one generic) has several names at one address,
//! and which of them the code ran as, no frame can tell. DWARF keeps one of
//! them (here `UnixDatagram::recv`, in a TCP server's profile); the frame
//! is named by it and marked ` [+N identical]`, so that the name is read as
//! one of several.

use std::{collections::HashMap, os::fd::AsRawFd as _};

use object::{Object as _, ObjectSymbol as _};

use super::{
    elf,
    unwind::{Frame, Modules},
};

/// One module's symbol source, with its functions folded together.
enum Source {
    Dwarf(Box<addr2line::Loader>, Folded),
    /// The vdso's dynamic symbols, or a stripped module's debug file's
    /// symbol table (no DWARF).
    Symbols(Vec<(u64, String)>, Folded),
    Missing,
}

/// The functions of a module that carry several names: `(start, end, how
/// many distinct names)`, sorted by start. Only those: most modules have
/// a few dozen.
#[derive(Default)]
struct Folded(Vec<(u64, u64, u32)>);

impl Folded {
    /// From an ELF image's function symbols ([`text_symbols`]; those with
    /// a size): the addresses holding two or more distinct names once
    /// demangled (a local and a global copy of one name are one, and so
    /// are a C library's aliases of one function: [`alias_key`]).
    fn of(syms: &[TextSymbol<'_>]) -> Folded {
        let mut out = Vec::new();
        let sized: Vec<&TextSymbol<'_>> = syms.iter().filter(|s| s.1 > 0).collect();
        for group in sized.chunk_by(|a, b| a.0 == b.0) {
            if group.len() < 2 {
                continue;
            }
            let mut names: Vec<String> =
                group.iter().map(|s| alias_key(&demangle(s.2)).to_string()).collect();
            names.sort_unstable();
            names.dedup();
            if names.len() >= 2 {
                let size = group.iter().map(|s| s.1).max().unwrap_or(0);
                out.push((group[0].0, group[0].0 + size, names.len() as u32));
            }
        }
        Folded(out)
    }

    /// How many other names the function holding `addr` has (0: none).
    fn others_at(&self, addr: u64) -> u32 {
        let i = self.0.partition_point(|f| f.0 <= addr);
        match i.checked_sub(1).map(|i| self.0[i]) {
            Some((_, end, names)) if addr < end => names - 1,
            _ => 0,
        }
    }

    /// `name`, marked when the function at `addr` was folded.
    fn mark(&self, name: String, addr: u64) -> String {
        match self.others_at(addr) {
            0 => name,
            n => format!("{name} [+{n} identical]"),
        }
    }
}

/// Symbolizes frames of one run, caching per frame.
pub struct Symbolizer<'m> {
    modules: &'m Modules,
    vdso: Option<&'m [u8]>,
    sources: HashMap<u32, Source>,
    kallsyms: Vec<(u64, String)>,
    cache: HashMap<Frame, Vec<String>>,
    /// `--debug-dir`'s `.build-id` directory.
    debug_root: std::path::PathBuf,
}

impl<'m> Symbolizer<'m> {
    /// `debug_dir`: debug files are looked up as
    /// `debug_dir/.build-id/ab/cdef….debug`.
    pub fn new(
        modules: &'m Modules,
        vdso: Option<&'m [u8]>,
        debug_dir: &std::path::Path,
    ) -> Symbolizer<'m> {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms")
            .map(|t| parse_kallsyms(&t))
            .unwrap_or_default();
        Symbolizer {
            modules,
            vdso,
            sources: HashMap::new(),
            kallsyms,
            cache: HashMap::new(),
            debug_root: debug_dir.join(".build-id"),
        }
    }

    /// The names of a frame, outermost first (several when functions were
    /// inlined into it).
    pub fn names(&mut self, frame: Frame) -> &[String] {
        if !self.cache.contains_key(&frame) {
            let names = self.resolve(frame);
            self.cache.insert(frame, names);
        }
        &self.cache[&frame]
    }

    fn resolve(&mut self, frame: Frame) -> Vec<String> {
        match frame {
            Frame::Truncated => vec!["[truncated]".into()],
            Frame::Unsampled => vec!["[stack not sampled]".into()],
            Frame::Unmapped(a) => vec![format!("[unknown]+0x{a:x}")],
            Frame::Kernel(a) => vec![match lookup(&self.kallsyms, a) {
                Some(name) => format!("{name}_[k]"),
                None => format!("[kernel]+0x{a:x}_[k]"),
            }],
            Frame::User { module, svma } => {
                let path = &self.modules.paths[module as usize];
                let base = path.rsplit('/').next().unwrap_or(path).to_string();
                let source = self.source(module);
                let mut names = match source {
                    Source::Dwarf(loader, folded) => {
                        let mut names = dwarf_names(loader, svma);
                        // The outermost is the function the code is of;
                        // the rest were inlined into it.
                        if let Some(outer) = names.first_mut() {
                            *outer = folded.mark(std::mem::take(outer), svma);
                        }
                        names
                    }
                    Source::Symbols(syms, folded) => lookup(syms, svma)
                        .map(|n| folded.mark(demangle(n), svma))
                        .into_iter()
                        .collect(),
                    Source::Missing => Vec::new(),
                };
                if names.is_empty() {
                    names.push(format!("{base}+0x{svma:x}"));
                }
                names
            }
        }
    }

    fn source(&mut self, module: u32) -> &Source {
        self.sources.entry(module).or_insert_with(|| {
            if self.modules.paths[module as usize] == "[vdso]" {
                let Some(vdso) = self.vdso else { return Source::Missing };
                let (symbols, folded) = symbol_table(vdso);
                return Source::Symbols(symbols, folded);
            }
            let Some(file) = &self.modules.files[module as usize] else { return Source::Missing };
            // A stripped module: the symbol table its debug file keeps
            // (same addresses; libc's internal functions, such as its
            // memcpy variants, are in no dynamic symbol table). Names
            // only, not the debug file's DWARF: libc's would add ~23 MiB
            // to the agent's peak RSS and ~80 ms to the end of the run,
            // for inlined frames inside libc.
            let debug = elf::stripped_build_id(file)
                .and_then(|id| elf::debug_file_path(&self.debug_root, &id))
                .and_then(|p| std::fs::File::open(p).ok())
                // SAFETY: a read-only mapping of a file opened here.
                .and_then(|f| unsafe { memmap2::Mmap::map(&f) }.ok())
                .map(|map| symbol_table(&map))
                .filter(|(symbols, _)| !symbols.is_empty());
            if let Some((symbols, folded)) = debug {
                return Source::Symbols(symbols, folded);
            }
            // The file as we opened it while the target ran.
            // SAFETY: a read-only mapping of a file the agent holds open.
            let folded = unsafe { memmap2::Mmap::map(file) }
                .map_or_else(|_| Folded::default(), |map| Folded::of(&text_symbols(&map)));
            addr2line::Loader::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .map_or(Source::Missing, |l| Source::Dwarf(Box::new(l), folded))
        })
    }
}

/// What C libraries' aliases of one function have in common: glibc's
/// `recv` is also `__recv`, `__libc_recv` and `__GI___recv` (its internal
/// name), `puts` also `_IO_puts`; a symbol version (`recv@@GLIBC_2.2.5`) is
/// no other name either.
fn alias_key(name: &str) -> &str {
    let mut n = name.split('@').next().unwrap_or(name);
    loop {
        let before = n;
        for prefix in ["__GI_", "__libc_", "_IO_"] {
            n = n.strip_prefix(prefix).unwrap_or(n);
        }
        n = n.trim_start_matches('_');
        if n == before {
            return n;
        }
    }
}

/// DWARF frames at `svma` (inlined ones included), outermost first; the
/// symbol table's name when there is no DWARF.
fn dwarf_names(loader: &addr2line::Loader, svma: u64) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(mut frames) = loader.find_frames(svma) {
        while let Ok(Some(f)) = frames.next() {
            if let Some(Ok(name)) = f.function.as_ref().map(|n| n.demangle()) {
                names.push(clean(&name));
            }
        }
    }
    if names.is_empty()
        && let Some(sym) = loader.find_symbol(svma)
    {
        names.push(demangle(sym));
    }
    names.reverse();
    names
}

fn demangle(name: &str) -> String {
    clean(&addr2line::demangle_auto(name.into(), None))
}

/// A name fit for a folded line: no `;` (the frame separator), no newline.
fn clean(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

/// A defined function symbol of an ELF image: address, size, name.
type TextSymbol<'a> = (u64, u64, &'a str);

/// An ELF image's defined function symbols (dynamic and static), sorted.
fn text_symbols(data: &[u8]) -> Vec<TextSymbol<'_>> {
    let Ok(file) = object::File::parse(data) else { return Vec::new() };
    let mut syms: Vec<TextSymbol<'_>> = file
        .dynamic_symbols()
        .chain(file.symbols())
        .filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0)
        .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?)))
        .collect();
    syms.sort_unstable();
    syms
}

/// What names a module without DWARF, from one parse of its ELF symbol
/// table: one name per address (the first in byte order), sorted by
/// address, and its folded functions.
fn symbol_table(data: &[u8]) -> (Vec<(u64, String)>, Folded) {
    let syms = text_symbols(data);
    let mut names: Vec<(u64, String)> = syms.iter().map(|s| (s.0, s.2.to_string())).collect();
    names.sort();
    names.dedup_by_key(|s| s.0);
    (names, Folded::of(&syms))
}

/// `/proc/kallsyms` text symbols, sorted by address.
fn parse_kallsyms(text: &str) -> Vec<(u64, String)> {
    let mut syms: Vec<(u64, String)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let kind = f.next()?;
            let name = f.next()?;
            (addr != 0 && matches!(kind, "t" | "T" | "w" | "W")).then(|| (addr, name.to_string()))
        })
        .collect();
    syms.sort();
    syms
}

/// The symbol at or before `addr` in a sorted table.
fn lookup(syms: &[(u64, String)], addr: u64) -> Option<&str> {
    let i = syms.partition_point(|s| s.0 <= addr).checked_sub(1)?;
    Some(&syms[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_lookup_takes_the_symbol_below() {
        let syms = parse_kallsyms(
            "ffffffff81000000 T _stext\nffffffff81000100 t do_thing\n0000000000000000 A x\n\
             ffffffff81000200 D data\nffffffff81000300 T other [mod]\n",
        );
        assert_eq!(syms.len(), 3);
        assert_eq!(lookup(&syms, 0xffffffff81000150), Some("do_thing"));
        assert_eq!(lookup(&syms, 0xffffffff80000000), None);
    }

    #[test]
    fn debug_files_are_found_by_build_id() {
        let root = std::path::Path::new("/usr/lib/debug/.build-id");
        let p = elf::debug_file_path(root, &[0x93, 0xac, 0x61, 0x0e]).unwrap();
        assert_eq!(p, root.join("93").join("ac610e.debug"));
        assert_eq!(elf::debug_file_path(root, &[0x93]), None);
        assert_eq!(elf::debug_file_path(root, &[]), None);
    }

    #[test]
    fn folded_functions_are_marked_with_their_other_names() {
        let folded = Folded(vec![(0x100, 0x140, 3), (0x200, 0x210, 2)]);
        assert_eq!(folded.mark("recv".into(), 0x120), "recv [+2 identical]");
        assert_eq!(folded.mark("f".into(), 0x20f), "f [+1 identical]");
        assert_eq!(folded.mark("g".into(), 0x140), "g", "past the folded function's end");
        assert_eq!(folded.mark("h".into(), 0x50), "h");
        // A C library's names of one function are one name.
        for alias in ["__GI___recv", "__libc_recv", "__recv", "recv", "recv@@GLIBC_2.2.5"] {
            assert_eq!(alias_key(alias), "recv");
        }
        assert_eq!(alias_key("__GI__IO_puts"), "puts");
        assert_ne!(alias_key("__memcpy_avx_unaligned"), alias_key("__memmove_avx_unaligned"));
        // This test binary has them: Rust folds identical monomorphs.
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let own = Folded::of(&text_symbols(&exe));
        assert!(!own.0.is_empty(), "no folded function in this test binary");
        assert!(own.0.iter().all(|&(start, end, n)| end > start && n >= 2));
    }

    #[test]
    fn names_are_demangled_and_fit_a_folded_line() {
        assert_eq!(demangle("_ZN4core3fmt5write17h0123456789abcdefE"), "core::fmt::write");
        assert_eq!(demangle("_ZN3foo3barEv"), "foo::bar()");
        assert_eq!(clean("a;b\nc"), "a:b c");
    }
}
