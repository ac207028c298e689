import Foundation

/// SIGHUP ("reload your configuration") delivered as calls on one dedicated thread.
///
/// Why not a `DispatchSource` or a `sigwait` thread: on Linux, an async `main` parks the main thread
/// in `dispatch_main`, which waits in `sigsuspend` with an EMPTY mask, so the main thread accepts
/// every signal whatever was blocked before; libdispatch's own signal sources meanwhile need the
/// signal blocked in every thread (signalfd) and re-raise it thread-directed when it lands elsewhere.
/// Whether a SIGHUP then arrives depends on which thread the kernel picks. Here the handler (a
/// sigaction, process-wide) only writes one byte into a non-blocking pipe, which is async-signal-safe
/// and works on whichever thread runs it; the reader thread unblocks SIGHUP for itself, so at least
/// one thread always accepts it even when every other thread blocks it.
///
/// Installed once per process, on the first `observe`; observers come and go. Several signals that
/// arrive while a reload runs are coalesced into one more call.
public enum HangupSignal {
    /// Calls `body` on the signal thread for each (coalesced) SIGHUP until the token is cancelled.
    /// Throws only when the pipe or the thread cannot be created.
    public static func observe(_ body: @escaping @Sendable () -> Void) throws -> ObservationToken {
        try HangupDispatcher.shared.get().add(body)
    }

    /// How many SIGHUPs the signal thread has read so far (0 before the first `observe`).
    public static var received: UInt64 { (try? HangupDispatcher.shared.get().received) ?? 0 }
}

/// Write end of the signal pipe, read by the C handler. Set once before the handler is installed and
/// never closed (the handler may run on any thread at any time), so a plain global is enough.
nonisolated(unsafe) private var hangupPipeWrite: Int32 = -1

private func hangupHandler(_ signal: Int32) {
    let saved = errno
    var byte: UInt8 = 1
    _ = write(hangupPipeWrite, &byte, 1)
    errno = saved
}

private final class HangupDispatcher: @unchecked Sendable {
    static let shared: Result<HangupDispatcher, HangupSignalError> = Result { try HangupDispatcher() }
        .mapError { $0 as? HangupSignalError ?? .setup("\($0)") }

    private let lock = NSLock()
    private var observers: [UInt64: @Sendable () -> Void] = [:]
    private var nextID: UInt64 = 0
    private var count: UInt64 = 0
    private let readEnd: Int32

    private init() throws {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw HangupSignalError.setup("pipe: \(String(cString: strerror(errno)))") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        // A full pipe means a reload is already pending: the handler must never block.
        _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
        readEnd = fds[0]
        hangupPipeWrite = fds[1]

        var action = sigaction()
        action.__sigaction_handler.sa_handler = hangupHandler
        sigemptyset(&action.sa_mask)
        action.sa_flags = SA_RESTART
        guard sigaction(SIGHUP, &action, nil) == 0 else {
            throw HangupSignalError.setup("sigaction(SIGHUP): \(String(cString: strerror(errno)))")
        }
        Thread.detachNewThread { [self] in readLoop() }
    }

    var received: UInt64 {
        lock.lock()
        defer { lock.unlock() }
        return count
    }

    func add(_ body: @escaping @Sendable () -> Void) -> ObservationToken {
        lock.lock()
        nextID += 1
        let id = nextID
        observers[id] = body
        lock.unlock()
        return ObservationToken { [self] in
            lock.lock()
            observers[id] = nil
            lock.unlock()
        }
    }

    private func readLoop() {
        // Threads started from Swift concurrency inherit libdispatch's "block everything" mask.
        var unblock = sigset_t()
        sigemptyset(&unblock)
        sigaddset(&unblock, SIGHUP)
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        var buffer = [UInt8](repeating: 0, count: 64)
        while true {
            let n = read(readEnd, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            lock.lock()
            count += UInt64(n)
            let current = Array(observers.values)
            lock.unlock()
            for body in current { body() }
        }
    }
}

/// The signal plumbing could not be set up.
public enum HangupSignalError: Error, CustomStringConvertible {
    case setup(String)
    public var description: String {
        switch self {
        case .setup(let why): "cannot listen for SIGHUP: \(why)"
        }
    }
}
