import Foundation
import Hummingbird

/// What to do with a request's `Range` header, decided before `FileMiddleware` sees it.
///
/// `FileMiddleware` handles `bytes=a-b` and `bytes=a-` well but reads a suffix range `bytes=-N` as the
/// first N+1 bytes, answers a range that starts past the end with 206 and a bogus Content-Range, and
/// refuses multi-range or other units with 416. RFC 9110 §14.2 lets a server ignore any Range, so:
/// satisfiable single ranges are rewritten to the absolute `bytes=first-last` it handles, unsatisfiable
/// ones get 416 with `Content-Range: bytes */size`, and everything else is dropped (200, whole file).
enum RangeDecision: Equatable {
    /// No Range, or one to ignore: serve the whole file.
    case whole
    /// Serve `first...last` (inclusive, clamped to the file).
    case bytes(ClosedRange<Int>)
    /// 416.
    case unsatisfiable

    /// Pure: the header value and the file's size in, the decision out (table-tested).
    static func decide(header: String, size: Int) -> RangeDecision {
        guard header.hasPrefix("bytes=") else { return .whole }
        let spec = header.dropFirst("bytes=".count).trimmingSpaces()
        guard !spec.contains(","), let dash = spec.firstIndex(of: "-") else { return .whole }
        let firstText = spec[..<dash].trimmingSpaces(), lastText = spec[spec.index(after: dash)...].trimmingSpaces()
        func number(_ text: Substring) -> Int? {
            guard !text.isEmpty, text.utf8.count <= 18, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
            return Int(text)
        }
        if firstText.isEmpty {
            // Suffix range: the last N bytes.
            guard let count = number(lastText) else { return .whole }
            guard count > 0, size > 0 else { return .unsatisfiable }
            return .bytes(max(0, size - count)...(size - 1))
        }
        guard let first = number(firstText) else { return .whole }
        let last: Int
        if lastText.isEmpty {
            last = size - 1
        } else {
            guard let value = number(lastText) else { return .whole }
            guard value >= first else { return .whole }  // syntactically invalid: ignore (RFC 9110 §14.1.1)
            last = min(value, size - 1)
        }
        guard first < size else { return .unsatisfiable }
        return .bytes(first...last)
    }
}

extension Substring {
    fileprivate func trimmingSpaces() -> Substring {
        var text = self
        while text.first == " " || text.first == "\t" { text = text.dropFirst() }
        while text.last == " " || text.last == "\t" { text = text.dropLast() }
        return text
    }
}

/// Sits in front of `FileMiddleware`: normalises `Range` (see `RangeDecision`) and gives files without a
/// known extension (`vmlinuz`, `pxelinux.cfg/01-…`) a Content-Type (`ResponseHead.contentType`).
struct StaticFileGuard<Context: RequestContext>: RouterMiddleware {
    let provider: RootFileProvider

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var request = request
        if let range = request.headers[.range] {
            var head = request.head
            head.headerFields[.range] = nil
            // Range is defined for GET only; a conditional request decides 304/200 before Range applies
            // (RFC 9110 §13.2.2), so with conditions present an unsatisfiable range is simply dropped.
            if request.method == .get, let size = fileSize(request) {
                let conditional = request.headers[.ifNoneMatch] != nil || request.headers[.ifModifiedSince] != nil
                    || request.headers[.ifRange] != nil
                switch RangeDecision.decide(header: range, size: size) {
                case .whole:
                    break
                case .bytes(let bytes):
                    head.headerFields[.range] = "bytes=\(bytes.lowerBound)-\(bytes.upperBound)"
                case .unsatisfiable:
                    if !conditional {
                        return Response(status: .rangeNotSatisfiable,
                                        headers: [.contentRange: "bytes */\(size)", .contentLength: "0"])
                    }
                }
            }
            request = Request(head: head, body: request.body)
        }
        var response = try await next(request, context)
        // Every route sets its content type; a file whose extension names none gets one here.
        if response.headers[.contentType] == nil, response.status == .ok || response.status == .partialContent {
            response.headers[.contentType] = ResponseHead.fallbackContentType(for: request.uri.path)
        }
        return response
    }

    private func fileSize(_ request: Request) -> Int? {
        guard let path = request.uri.path.removingPercentEncoding,
              let id = provider.getFileIdentifier(path), id.refusal == nil, let stat = id.stat else { return nil }
        return Int(stat.size)
    }
}
