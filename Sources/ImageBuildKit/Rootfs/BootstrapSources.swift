import Foundation

/// One apt source of a bootstrap base: a mirror, a suite and its components.
public struct AptSource: Sendable, Equatable, CustomStringConvertible {
    /// The mirror as the recipe (or the default) names it.
    public var uri: String
    public var suite: String
    public var components: [String]

    /// The sources.list line the bootstrap tool is given.
    public var line: String { "deb \(uri) \(suite) \(components.joined(separator: " "))" }

    /// Where the mirror publishes the suite's release file, which names every package index of the
    /// suite by its sha256: `dists/<suite>/InRelease` (signed inline), else `dists/<suite>/Release`,
    /// the order apt and debootstrap try them in.
    public var releaseFiles: [String] {
        let base = uri.hasSuffix("/") ? String(uri.dropLast()) : uri
        return ["InRelease", "Release"].map { "\(base)/dists/\(suite)/\($0)" }
    }

    public var description: String { "\(uri) \(suite)" }
}

extension AptSource {
    static let debianMirror = "http://deb.debian.org/debian"
    static let debianSecurity = "http://security.debian.org/debian-security"
    /// Debian releases that have `<suite>-updates` and the security archive's `<suite>-security`
    /// (bullseye and later), to which mmdebstrap adds both when it is given no mirror.
    static let releasesWithUpdates: Set<String> = ["bullseye", "bookworm", "trixie", "oldstable", "stable"]

    /// The sources a `mmdebstrap`/`debootstrap` base installs from. Decided here once, for the
    /// tool's command line (`RootfsAssembler`) and for the build cache (`InputDigest`), so the cache
    /// digests exactly the suites the tool is given.
    ///
    /// With a `mirror`, that mirror and the suite. Without one, Debian's mirror and the suite; for
    /// mmdebstrap and a release in `releasesWithUpdates` also `<suite>-updates` and the security
    /// archive's `<suite>-security`, as mmdebstrap itself adds them (debootstrap uses one mirror and
    /// one suite). The components default to `main`.
    static func sources(tool: BootstrapTool, suite: String, mirror: String?, components: [String]) -> [AptSource] {
        let components = components.isEmpty ? ["main"] : components
        if let mirror { return [AptSource(uri: mirror, suite: suite, components: components)] }
        var sources = [AptSource(uri: debianMirror, suite: suite, components: components)]
        if tool == .mmdebstrap, releasesWithUpdates.contains(suite) {
            sources.append(AptSource(uri: debianMirror, suite: suite + "-updates", components: components))
            sources.append(AptSource(uri: debianSecurity, suite: suite + "-security", components: components))
        }
        return sources
    }
}

extension BaseSource {
    /// The apt sources of a bootstrap base (`AptSource.sources`); nil for every other kind.
    var bootstrapSources: [AptSource]? {
        guard case .bootstrap(let tool, let suite, let mirror, _, let components) = self else { return nil }
        return AptSource.sources(tool: tool, suite: suite, mirror: mirror, components: components)
    }
}
