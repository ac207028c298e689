import Foundation

/// ICU's data library (`libicudata.so.N`) emptied, for an initramfs whose programs link ICU but never
/// use its data: aria2c (`initramfs.p2p`) reaches ICU only through libxml2, for Metalink and XML-RPC,
/// which stage 1 never runs. The library is 31 MiB of collation, conversion and locale tables, more
/// than half of what the BitTorrent client brings, and every node fetches its initramfs.
///
/// The library stays a valid ELF file exporting `icudtNN_dat`, so the dynamic linker loads libicuuc as
/// before; only the common-data package behind that symbol becomes an empty table of contents, which
/// is exactly ICU's own "stubdata" (what ICU links when its data ships as a separate `.dat` file). A
/// lookup of any ICU data item then fails cleanly (`U_FILE_ACCESS_ERROR`) instead of finding it. The
/// emptied bytes are zeros: the file keeps its size in the unpacked initramfs but compresses to almost
/// nothing.
public enum ICUStubData {
    /// Whether `path` names ICU's data library (`libicudata.so`, any version).
    public static func isDataLibrary(_ path: String) -> Bool {
        (path as NSString).lastPathComponent.hasPrefix("libicudata.so")
    }

    /// The library at `path` with its common-data package emptied; nil when the file is not the
    /// 64-bit little-endian ELF with one `CmnD` package this expects (then it is carried unchanged).
    public static func stub(of path: String) -> Data? {
        guard var bytes = FileManager.default.contents(atPath: path) else { return nil }
        return bytes.withUnsafeMutableBytes { buffer -> Bool in
            let raw = buffer.bindMemory(to: UInt8.self)
            func u16(_ at: Int) -> Int { Int(raw[at]) | Int(raw[at + 1]) << 8 }
            func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
            func u64(_ at: Int) -> Int { u32(at) | u32(at + 4) << 32 }
            let count = raw.count
            // ELF64, little-endian: section headers, to bound the package by the section holding it.
            guard count > 64, raw[0] == 0x7f, raw[1] == 0x45, raw[2] == 0x4c, raw[3] == 0x46, raw[4] == 2, raw[5] == 1 else { return false }
            let tableOffset = u64(0x28), entrySize = u16(0x3a), entries = u16(0x3c)
            guard entrySize >= 64, tableOffset > 0, tableOffset + entries * entrySize <= count else { return false }
            // The package: MappedData (headerSize, 0xda, 0x27) and UDataInfo with data format "CmnD".
            var packages: [(start: Int, end: Int)] = []
            for index in 0..<entries {
                let header = tableOffset + index * entrySize
                guard u32(header + 4) == 1 else { continue }  // SHT_PROGBITS
                let start = u64(header + 0x18), size = u64(header + 0x20)
                guard start + 32 <= count, size >= 32, start + size <= count else { continue }
                guard raw[start + 2] == 0xda, raw[start + 3] == 0x27,
                      raw[start + 12] == 0x43, raw[start + 13] == 0x6d, raw[start + 14] == 0x6e, raw[start + 15] == 0x44 else { continue }
                packages.append((start, start + size))
            }
            guard packages.count == 1, let package = packages.first else { return false }
            let headerSize = u16(package.start)
            let toc = package.start + headerSize
            guard headerSize >= 24, toc + 4 <= package.end else { return false }
            // An empty table of contents (count 0), and nothing after it.
            for index in toc..<package.end { raw[index] = 0 }
            return true
        } ? bytes : nil
    }
}
