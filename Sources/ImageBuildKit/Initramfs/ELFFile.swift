/// What the dynamic loader needs to know about one ELF object, read from its
/// program headers the way ld.so reads them (not from section headers,
/// which stripped files may lack): PT_INTERP, and PT_DYNAMIC's DT_NEEDED,
/// DT_RPATH, DT_RUNPATH and DT_SONAME, whose strings live in DT_STRTAB.
///
/// Reading costs a few `pread`s of the headers and strings, whatever the
/// file's size.
public struct ELFObject: Sendable, Equatable {
    public enum Class: Sendable, Equatable { case elf32, elf64 }

    public let elfClass: Class
    public let littleEndian: Bool
    /// e_machine (62 x86-64, 183 aarch64, 3 i386, 40 arm, ...).
    public let machine: UInt16
    /// e_type (2 executable, 3 shared object/PIE).
    public let type: UInt16
    /// PT_INTERP, e.g. "/lib64/ld-linux-x86-64.so.2"; nil for static files and libraries.
    public let interpreter: String?
    /// DT_NEEDED, in order.
    public let needed: [String]
    /// DT_RPATH entries (colon-separated in the file), unexpanded.
    public let rpath: [String]
    /// DT_RUNPATH entries, unexpanded; nil when there is no DT_RUNPATH (which
    /// differs from an empty one: any DT_RUNPATH disables DT_RPATH).
    public let runpath: [String]?
    public let soname: String?
    /// Whether the file has a PT_DYNAMIC segment.
    public let isDynamic: Bool

    /// True for a file that loads nothing (busybox-static, static-pie).
    public var isStatic: Bool { interpreter == nil && needed.isEmpty }

    /// Whether a library can satisfy this object: same class, byte order and machine.
    public func isCompatible(with other: ELFObject) -> Bool {
        elfClass == other.elfClass && littleEndian == other.littleEndian && machine == other.machine
    }

    /// Reads the dynamic-linking facts of the ELF file at a host path.
    public static func read(path: String) throws(ELFDependencyError) -> ELFObject {
        let file: PositionalFile
        do { file = try PositionalFile(path: path) } catch { throw .unreadable(path: path, reason: error.message) }
        return try ELFReader(file: file, path: path).object()
    }

    /// Reads only the identification and machine, to check a candidate library.
    static func readIdentity(path: String) -> (Class, Bool, UInt16)? {
        guard let file = try? PositionalFile(path: path),
              let ident = try? file.read(at: 0, count: 20),
              ident.count == 20, ident.starts(with: [0x7F, 0x45, 0x4C, 0x46]),
              ident[4] == 1 || ident[4] == 2, ident[5] == 1 || ident[5] == 2
        else { return nil }
        let little = ident[5] == 1
        let machine = little ? UInt16(ident[18]) | UInt16(ident[19]) << 8 : UInt16(ident[19]) | UInt16(ident[18]) << 8
        return (ident[4] == 1 ? .elf32 : .elf64, little, machine)
    }

    /// The Debian multiarch triplet for this object's ABI, used to name the
    /// default library directories (/lib/<triplet>, /usr/lib/<triplet>).
    public var multiarchTriplets: [String] {
        let is64 = elfClass == .elf64
        switch machine {
        case 62: return is64 ? ["x86_64-linux-gnu"] : ["x86_64-linux-gnux32"]
        case 3: return ["i386-linux-gnu"]
        case 183: return ["aarch64-linux-gnu"]
        case 40: return ["arm-linux-gnueabihf", "arm-linux-gnueabi"]
        case 21: return littleEndian ? ["powerpc64le-linux-gnu"] : ["powerpc64-linux-gnu"]
        case 20: return ["powerpc-linux-gnu"]
        case 22: return is64 ? ["s390x-linux-gnu"] : ["s390-linux-gnu"]
        case 243: return is64 ? ["riscv64-linux-gnu"] : ["riscv32-linux-gnu"]
        case 258: return ["loongarch64-linux-gnu"]
        case 43: return ["sparc64-linux-gnu"]
        case 8:
            if is64 { return littleEndian ? ["mips64el-linux-gnuabi64"] : ["mips64-linux-gnuabi64"] }
            return littleEndian ? ["mipsel-linux-gnu"] : ["mips-linux-gnu"]
        default: return []
        }
    }
}

/// Reads one ELF file's headers with bounds checks everywhere: a corrupt or
/// truncated file becomes an `ELFDependencyError`, never a trap.
struct ELFReader {
    let file: PositionalFile
    let path: String

    private struct Segment { let type: UInt32; let offset: UInt64; let vaddr: UInt64; let filesz: UInt64 }

    /// Bounds on what the headers may make us read, so a corrupt count cannot
    /// allocate gigabytes.
    static let maxProgramHeaders = 4096
    static let maxDynamicBytes = 1 << 20
    static let maxStringLength = 4096

    func object() throws(ELFDependencyError) -> ELFObject {
        let ident = try read(0, 64, what: "ELF header", minimum: 16)
        guard ident.starts(with: [0x7F, 0x45, 0x4C, 0x46]) else {
            throw .notELF(path: path, found: Array(ident.prefix(8)))
        }
        guard ident[4] == 1 || ident[4] == 2 else { throw .malformed(path: path, reason: "EI_CLASS is \(ident[4]), not 1 or 2") }
        guard ident[5] == 1 || ident[5] == 2 else { throw .malformed(path: path, reason: "EI_DATA is \(ident[5]), not 1 or 2") }
        let is64 = ident[4] == 2
        let bytes = Bytes(little: ident[5] == 1)
        let headerSize = is64 ? 64 : 52
        guard ident.count >= headerSize else {
            throw .truncated(path: path, what: "ELF header", needed: headerSize, size: file.size)
        }
        let type = bytes.u16(ident, 16)
        let machine = bytes.u16(ident, 18)
        let phoff = is64 ? bytes.u64(ident, 32) : UInt64(bytes.u32(ident, 28))
        let phentsize = Int(bytes.u16(ident, is64 ? 54 : 42))
        let phnum = Int(bytes.u16(ident, is64 ? 56 : 44))
        if phnum == 0xFFFF {
            throw .unsupported(path: path, reason: "more than 65534 program headers (PN_XNUM)")
        }
        let minimumEntry = is64 ? 56 : 32
        if phnum > 0 && phentsize < minimumEntry {
            throw .malformed(path: path, reason: "program header entry size \(phentsize) is below \(minimumEntry)")
        }
        guard phnum <= Self.maxProgramHeaders else {
            throw .malformed(path: path, reason: "\(phnum) program headers")
        }

        var segments: [Segment] = []
        if phnum > 0 {
            let tableSize = phnum * phentsize
            let offset = try fileOffset(phoff, tableSize, what: "program header table")
            let table = try read(offset, tableSize, what: "program header table", minimum: tableSize)
            for i in 0..<phnum {
                let base = i * phentsize
                if is64 {
                    segments.append(Segment(
                        type: bytes.u32(table, base), offset: bytes.u64(table, base + 8),
                        vaddr: bytes.u64(table, base + 16), filesz: bytes.u64(table, base + 32)))
                } else {
                    segments.append(Segment(
                        type: bytes.u32(table, base), offset: UInt64(bytes.u32(table, base + 4)),
                        vaddr: UInt64(bytes.u32(table, base + 8)), filesz: UInt64(bytes.u32(table, base + 16))))
                }
            }
        }

        var interpreter: String?
        if let interp = segments.first(where: { $0.type == 3 }) {  // PT_INTERP
            let size = Int(min(interp.filesz, UInt64(Self.maxStringLength)))
            let offset = try fileOffset(interp.offset, size, what: "PT_INTERP segment")
            let raw = try read(offset, size, what: "PT_INTERP segment", minimum: size)
            let text = raw.prefix(while: { $0 != 0 })
            guard !text.isEmpty else { throw .malformed(path: path, reason: "empty PT_INTERP") }
            interpreter = String(decoding: text, as: UTF8.self)
        }

        var needed: [String] = [], rpath: [String] = [], runpath: [String]?, soname: String?
        let dynamic = segments.first(where: { $0.type == 2 })  // PT_DYNAMIC
        if let dynamic {
            let entrySize = is64 ? 16 : 8
            guard dynamic.filesz <= UInt64(Self.maxDynamicBytes) else {
                throw .malformed(path: path, reason: "PT_DYNAMIC of \(dynamic.filesz) bytes")
            }
            let size = Int(dynamic.filesz) / entrySize * entrySize
            let offset = try fileOffset(dynamic.offset, size, what: "PT_DYNAMIC segment")
            let table = try read(offset, size, what: "PT_DYNAMIC segment", minimum: size)
            var neededOffsets: [UInt64] = [], rpathOffsets: [UInt64] = [], runpathOffsets: [UInt64] = []
            var sonameOffset: UInt64?, strtab: UInt64?, strsz: UInt64?
            var position = 0
            while position + entrySize <= table.count {
                let tag = is64 ? bytes.u64(table, position) : UInt64(bytes.u32(table, position))
                let value = is64 ? bytes.u64(table, position + 8) : UInt64(bytes.u32(table, position + 4))
                position += entrySize
                switch tag {
                case 0: position = table.count  // DT_NULL
                case 1: neededOffsets.append(value)
                case 5: strtab = value
                case 10: strsz = value
                case 14: sonameOffset = value
                case 15: rpathOffsets.append(value)
                case 29: runpathOffsets.append(value)
                default: break
                }
            }
            let anyStrings = !neededOffsets.isEmpty || !rpathOffsets.isEmpty || !runpathOffsets.isEmpty || sonameOffset != nil
            if anyStrings {
                guard let strtab, let strsz else {
                    throw .malformed(path: path, reason: "PT_DYNAMIC has strings but no DT_STRTAB/DT_STRSZ")
                }
                // DT_STRTAB is a virtual address: find the PT_LOAD that maps it.
                guard let load = segments.first(where: { $0.type == 1 && $0.vaddr <= strtab && strtab - $0.vaddr < $0.filesz }) else {
                    throw .malformed(path: path, reason: "DT_STRTAB 0x\(String(strtab, radix: 16)) is in no loaded segment")
                }
                let (tableOffset, overflow) = load.offset.addingReportingOverflow(strtab - load.vaddr)
                guard !overflow else { throw .malformed(path: path, reason: "DT_STRTAB offset overflows") }
                func string(_ at: UInt64) throws(ELFDependencyError) -> String {
                    try self.string(table: tableOffset, size: strsz, at: at)
                }
                for offset in neededOffsets { needed.append(try string(offset)) }
                for offset in rpathOffsets { rpath += try string(offset).split(separator: ":").map(String.init) }
                if !runpathOffsets.isEmpty {
                    var entries: [String] = []
                    for offset in runpathOffsets { entries += try string(offset).split(separator: ":").map(String.init) }
                    runpath = entries
                }
                if let sonameOffset { soname = try string(sonameOffset) }
            }
        }
        return ELFObject(
            elfClass: is64 ? .elf64 : .elf32, littleEndian: bytes.little, machine: machine, type: type,
            interpreter: interpreter, needed: needed, rpath: rpath, runpath: runpath, soname: soname,
            isDynamic: dynamic != nil)
    }

    /// A NUL-terminated string in the dynamic string table, read in small
    /// chunks so a large .dynstr (libLLVM) is never read whole.
    private func string(table: UInt64, size: UInt64, at: UInt64) throws(ELFDependencyError) -> String {
        guard at < size else {
            throw .malformed(path: path, reason: "string offset \(at) is outside DT_STRSZ \(size)")
        }
        let start = try fileOffset(table + at, 1, what: "dynamic string table")
        let limit = Int(min(size - at, UInt64(Self.maxStringLength)))
        var collected: [UInt8] = []
        var chunk = 128
        while collected.count < limit {
            let count = min(chunk, limit - collected.count)
            let part = try read(start + collected.count, count, what: "dynamic string table", minimum: 1)
            if let nul = part.firstIndex(of: 0) {
                collected += part[..<nul]
                return String(decoding: collected, as: UTF8.self)
            }
            collected += part
            if part.count < count { break }
            chunk *= 4
        }
        throw .malformed(path: path, reason: "unterminated string at offset \(at) of the dynamic string table")
    }

    /// Checks that `[offset, offset + count)` lies in the file.
    private func fileOffset(_ offset: UInt64, _ count: Int, what: String) throws(ELFDependencyError) -> Int {
        let (end, overflow) = offset.addingReportingOverflow(UInt64(count))
        guard !overflow, end <= UInt64(file.size) else {
            let needed = overflow || end > UInt64(Int.max) ? Int.max : Int(end)
            throw .truncated(path: path, what: what, needed: needed, size: file.size)
        }
        return Int(offset)
    }

    private func read(_ offset: Int, _ count: Int, what: String, minimum: Int) throws(ELFDependencyError) -> [UInt8] {
        let data: [UInt8]
        do { data = try file.read(at: offset, count: count) } catch { throw .unreadable(path: path, reason: error.message) }
        guard data.count >= minimum else {
            throw .truncated(path: path, what: what, needed: offset + minimum, size: file.size)
        }
        return data
    }

    /// Endian-aware integer loads; callers check bounds first.
    struct Bytes {
        let little: Bool
        func u16(_ b: [UInt8], _ at: Int) -> UInt16 {
            little ? UInt16(b[at]) | UInt16(b[at + 1]) << 8 : UInt16(b[at]) << 8 | UInt16(b[at + 1])
        }
        func u32(_ b: [UInt8], _ at: Int) -> UInt32 {
            var v: UInt32 = 0
            for i in 0..<4 { v |= UInt32(b[at + (little ? i : 3 - i)]) << (8 * i) }
            return v
        }
        func u64(_ b: [UInt8], _ at: Int) -> UInt64 {
            var v: UInt64 = 0
            for i in 0..<8 { v |= UInt64(b[at + (little ? i : 7 - i)]) << (8 * i) }
            return v
        }
    }
}
