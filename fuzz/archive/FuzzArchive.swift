// libFuzzer target over every archive entry point of ImageBuildKit: what `imagebuild inspect` reads, the
// `base: tarball` and `base: oci-archive` paths of a build, and Debian packages (DebPackage.extract and
// KernelImage.read(debPackage:)). Built and run by fuzz/archive/run.sh, which picks the entry point.
//
// Each input is written to a file in FUZZ_ARCHIVE_WORK (a size-limited tmpfs: the extraction is bounded by
// it, and a full tmpfs is one more thrown error) and handed to the library by path, as the command line
// does. A thrown Swift error is the expected outcome for a bad archive; anything else is a finding:
// a trap, an ASan or LeakSanitizer report, a time-out, or one of the checks below, which trap so that
// libFuzzer saves the input:
// - nothing is written or removed next to the tree being extracted (a sentinel file sits beside it);
// - no write fails with EROFS: run.sh mounts everything but the work tmpfs and the fuzz scratch read-only
//   in a private mount namespace, so EROFS means a write aimed outside the work directory;
// - no file from outside the archive (host-secret.tar, next to the work tree) ends up in the tree;
// - no input takes 2 s or more;
// - no descriptor of a file in the work directory and no spool file (TMPDIR is there too) outlives an input.
import Foundation
import ImageBuildKit
import Logging

enum EntryPoint: String, CaseIterable {
    case inspect, tarball, oci, deb
}

/// What one process fuzzes, from FUZZ_ARCHIVE_ENTRY (run.sh sets it; one corpus per entry point).
let entryPoint: EntryPoint = {
    let name = ProcessInfo.processInfo.environment["FUZZ_ARCHIVE_ENTRY"] ?? ""
    guard let entry = EntryPoint(rawValue: name) else {
        fatalError("FUZZ_ARCHIVE_ENTRY must be one of \(EntryPoint.allCases.map(\.rawValue)), not '\(name)'")
    }
    return entry
}()

let work: String = {
    guard let work = ProcessInfo.processInfo.environment["FUZZ_ARCHIVE_WORK"], work.hasPrefix("/") else {
        fatalError("FUZZ_ARCHIVE_WORK must name an absolute directory (a small tmpfs): the extractions go there")
    }
    return work
}()
let inputPath = work + "/input"
/// Holds the tree's root and a sentinel: after an input the folder holds exactly those two.
let treeParent = work + "/tree"
let treeRoot = treeParent + "/root"
let sentinel = treeParent + "/sentinel"
let scratch = work + "/scratch"
let temporary = work + "/tmp"
let kernelOut = work + "/vmlinuz"
/// A valid layer outside the tree and the staging folder, holding `/stolen-marker`: an archive that gets
/// it read into the tree (a digest or layer path with "..", a symlinked blob) is a finding. The OCI seeds
/// of run.sh point at it as `sha256:../../../../host-secret.tar` and by a relative symlink.
let hostSecret = work + "/host-secret.tar"
let stolenMarker = "stolen-marker"
/// Data read per input by the inspect entry point before it stops (a decompression bomb is not a finding).
let inspectDataLimit = 64 << 20

let logger = Logger(label: "fuzz-archive") { _ in SwiftLogNoOpLogHandler() }

/// The build's own recipe path for a base archive: the loader checks the file exists, so the input file is
/// created before this is first used.
func recipe(base: String) -> Recipe {
    let text = "name: fuzz\nbase: {\(base): \(inputPath)}\nkernel: {from: rootfs}\n"
    do { return try RecipeLoader.parse(text, file: work + "/recipe.yaml", folder: work) } catch {
        fatalError("fuzz recipe does not load: \(error)")
    }
}

/// Set by `run.sh replay`: each input's outcome is printed.
let verbose = ProcessInfo.processInfo.environment["FUZZ_ARCHIVE_VERBOSE"] != nil

nonisolated(unsafe) var recipes: [EntryPoint: Recipe] = [:]

struct StopReading: Error {}

/// A check that holds for every input; its message is printed even in an -O build (a failed
/// `precondition` there traps without one).
func require(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { finding(message()) }
}

func finding(_ message: String) -> Never {
    fatalError("FINDING: " + message)
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    _ = entryPoint
    for folder in [work, temporary, treeParent] {
        try! FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }
    // The deb spool (SpoolFile) and anything else temporary stays inside the bounded work directory.
    setenv("TMPDIR", temporary + "/", 1)
    require(NSTemporaryDirectory().hasPrefix(temporary), "TMPDIR not honoured: \(NSTemporaryDirectory())")
    _ = FileManager.default.createFile(atPath: inputPath, contents: nil)
    _ = FileManager.default.createFile(atPath: sentinel, contents: Data("sentinel\n".utf8))
    writeHostSecret()
    recipes[.tarball] = recipe(base: "tarball")
    recipes[.oci] = recipe(base: "oci-archive")
    return 0
}

/// The time an input may take. libFuzzer's -timeout=2 is the same limit, but its alarm can interrupt a
/// blocking open(2) (of a FIFO) and so turn the hang into an error; this check still sees it.
let slowInput = 2.0

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let start = Date()
    defer {
        let seconds = Date().timeIntervalSince(start)
        require(seconds < slowInput, "the input took \(seconds) s (a hang, or unbounded work)")
    }
    writeInput(UnsafeRawBufferPointer(start: data, count: size))
    do {
        switch entryPoint {
        case .inspect: try inspect()
        case .tarball, .oci: try assembleBase(recipes[entryPoint]!)
        case .deb: try debPackage()
        }
        if verbose { print("\(entryPoint): no error") }
    } catch {
        check(error)
    }
    checkAfterInput()
    return 0
}

func writeInput(_ bytes: UnsafeRawBufferPointer) {
    let fd = open(inputPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    require(fd >= 0, "cannot write the input: \(String(cString: strerror(errno)))")
    var done = 0
    while done < bytes.count {
        let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
        require(n > 0, "cannot write the input: \(String(cString: strerror(errno)))")
        done += n
    }
    close(fd)
}

/// `imagebuild inspect`: every header, and (unlike the command) every regular entry's data too.
func inspect() throws {
    let reader = try ArchiveReader(path: inputPath)
    var total = 0
    do {
        while let header = try reader.next() {
            require(header.permissions <= 0o7777, "permissions \(header.permissions) beyond 0o7777")
            guard case .regular = header.kind else { continue }
            try reader.readData { chunk in
                total += chunk.count
                if total > inspectDataLimit { throw StopReading() }
            }
        }
    } catch is StopReading {}
}

/// A build's base step: RootfsAssembler with a recipe whose base is the input (tarball or OCI archive).
func assembleBase(_ recipe: Recipe) throws {
    defer {
        var info = stat()
        require(lstat(treeRoot + "/" + stolenMarker, &info) != 0, "a file outside the archive was read into the tree")
        cleanUpTrees()
    }
    let tree = try RootfsTree(root: treeRoot)
    try RootfsAssembler(recipe: recipe, tree: tree, scratch: scratch, logger: logger).assemble()
}

func writeHostSecret() {
    var bytes = Data()
    do {
        let writer = try ArchiveWriter(format: .paxRestricted) { bytes.append(contentsOf: $0) }
        let content = Data("read from outside the archive\n".utf8)
        try writer.write(path: stolenMarker, kind: .regular, permissions: 0o644, uid: 0, gid: 0, mtime: 0, inode: 1,
                         size: Int64(content.count)) { sink in try content.withUnsafeBytes(sink) }
        try writer.close()
        try bytes.write(to: URL(fileURLWithPath: hostSecret))
    } catch {
        fatalError("cannot write \(hostSecret): \(error)")
    }
}

/// `base: debs` unpacks with DebPackage.extract; `kernel: {deb: ...}` reads the version with KernelImage.
func debPackage() throws {
    defer {
        cleanUpTrees()
        unlink(kernelOut)
    }
    do {
        try DebPackage(path: inputPath).extract(into: try RootfsTree(root: treeRoot))
    } catch {
        check(error)
    }
    checkTreeNeighbours()
    _ = try KernelImage.read(debPackage: URL(fileURLWithPath: inputPath), extractingImageTo: URL(fileURLWithPath: kernelOut))
}

/// A thrown error is fine, except one that shows a write outside the work directory.
func check(_ error: Error) {
    if verbose { print("\(entryPoint): thrown: \(error)") }
    if case RootfsError.system(let operation, let path, let code) = error, code == EROFS {
        finding("\(operation) \(path) hit a read-only file system: a write outside the work directory")
    }
    let text = "\(error)"
    require(!text.contains("Read-only file system"), "a write outside the work directory: \(text)")
}

func checkTreeNeighbours() {
    var info = stat()
    require(lstat(treeRoot, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR, "the tree's root itself was removed or replaced")
    let names = (try? FileManager.default.contentsOfDirectory(atPath: treeParent)) ?? []
    require(names.contains("sentinel"), "the file next to the tree's root was removed (found \(names))")
    require(Set(names).isSubset(of: ["sentinel", "root"]), "written next to the tree's root: \(names.sorted())")
}

func cleanUpTrees() {
    checkTreeNeighbours()
    removeAll(treeRoot)
    removeAll(scratch)
}

func checkAfterInput() {
    let left = (try? FileManager.default.contentsOfDirectory(atPath: temporary)) ?? []
    require(left.isEmpty, "temporary files left behind: \(left)")
    // Descriptors are compared by what they name, not by number: libFuzzer itself opens pipes to
    // llvm-symbolizer the first time it prints a new function.
    let open = openDescriptors().filter { $0.target.hasPrefix(work) }
    require(open.isEmpty, "a file descriptor was left open: \(open.map { "\($0.fd) -> \($0.target)" })")
}

/// Every open descriptor and what /proc says it names.
func openDescriptors() -> [(fd: Int, target: String)] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return names.compactMap(Int.init).sorted().map { fd in
        (fd, (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)")) ?? "?")
    }
}

/// Removes an extracted tree whatever its modes (an archive may make a directory 0000).
func removeAll(_ path: String) {
    var info = stat()
    guard lstat(path, &info) == 0 else { return }
    if (try? FileManager.default.removeItem(atPath: path)) != nil { return }
    _ = chmodTree(path)
    do { try FileManager.default.removeItem(atPath: path) } catch {
        fatalError("cannot clean up \(path): \(error)")
    }
}

func chmodTree(_ path: String) -> Bool {
    var info = stat()
    guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else { return true }
    chmod(path, 0o700)
    for name in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] { _ = chmodTree(path + "/" + name) }
    return true
}
