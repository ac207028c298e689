// swift-tools-version: 6.0
import PackageDescription

// Dependencies point one way: imagebuild (CLI) -> BootServer -> {BootProtocols, ImageBuildKit};
// ImageBuildKit -> CArchive; both libraries -> NetworkAddresses (a leaf). See docs/architecture.md.
let package = Package(
    name: "imagebuild",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "imagebuild", targets: ["imagebuild"]),
        .library(name: "ImageBuildKit", targets: ["ImageBuildKit"]),
        .library(name: "BootProtocols", targets: ["BootProtocols"]),
        .library(name: "BootServer", targets: ["BootServer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        // Hummingbird's own dependencies, imported directly by the HTTP fast path (HTTP field names,
        // the NIO <-> HTTPTypes handlers) and the HTTP listener (NIOExtras' quiescing helper).
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.20.0"),
        // Node files in nodes.yaml are Mustache templates (logic-less: data in, text out).
        .package(url: "https://github.com/hummingbird-project/swift-mustache", from: "2.0.0"),
        // `imagebuild power`: Redfish over HTTPS (AsyncHTTPClient, NIOSSL for a pinned certificate) and
        // ipmitool run as a child process (Subprocess: async, time-outs by cancellation).
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.30.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CArchive",
            pkgConfig: "libarchive",
            providers: [.apt(["libarchive-dev"])]
        ),
        // openat2(2) for the TFTP root's confinement (header only: nothing to link).
        .systemLibrary(name: "CLinux"),
        // MAC, IPv4 address, IPv4 network and pxelinux's lookup order: the one address vocabulary,
        // re-exported by ImageBuildKit and BootProtocols. No dependencies.
        .target(name: "NetworkAddresses"),
        .target(
            name: "ImageBuildKit",
            dependencies: [
                "CArchive", "NetworkAddresses",
                .product(name: "Yams", package: "Yams"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Mustache", package: "swift-mustache"),
            ],
            // Stage 1's shell scripts, compiled into the binary (PackageResources.<file>, [UInt8]).
            resources: [.embedInCode("Initramfs/stage1")],
            linkerSettings: [.linkedLibrary("z")],
            plugins: ["StageOneLoader"]
        ),
        // An epoll loop on a thread of its own for many UDP sockets (TFTP transfers, server and simulator).
        .target(
            name: "DatagramIO",
            dependencies: ["CLinux", .product(name: "NIOCore", package: "swift-nio"),
                           .product(name: "NIOConcurrencyHelpers", package: "swift-nio")]
        ),
        .target(
            name: "BootProtocols",
            dependencies: ["NetworkAddresses", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .target(
            name: "BootServer",
            dependencies: [
                "BootProtocols", "ImageBuildKit", "NetworkAddresses", "CLinux", "DatagramIO",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // BMC power control for `imagebuild power` and `reboot`: IPMI through ipmitool, Redfish through
        // AsyncHTTPClient. Kept out of BootServer: the server never powers anything.
        .target(
            name: "PowerControl",
            dependencies: [
                "ImageBuildKit",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ]
        ),
        // `publish --store`: images in an S3-compatible store (Ceph RGW, MinIO, SeaweedFS). AWS Signature
        // Version 4 on swift-crypto, requests through AsyncHTTPClient; kept out of ImageBuildKit, which
        // knows only its `ImageStore` protocol and stays free of NIO.
        .target(
            name: "ObjectStore",
            dependencies: [
                "ImageBuildKit",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // Stage 1's image loader (Sources/imagebuild-fetch/main.c), compiled by this plugin and
        // carried in ImageBuildKit as bytes: one-pass download + SHA-256 (Nettle) + Range resume.
        .plugin(name: "StageOneLoader", capability: .buildTool(), path: "Plugins/StageOneLoader"),
        .executableTarget(
            name: "imagebuild",
            dependencies: [
                "ImageBuildKit", "BootServer", "PowerControl", "ObjectStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The boot-storm simulator (benchmarks/boot-storm.sh): N simulated PXE nodes against a server.
        .executableTarget(
            name: "imagebuild-storm",
            dependencies: [
                "BootProtocols", "ImageBuildKit", "CLinux", "DatagramIO",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/BootStorm"
        ),
        // What the test targets share (Tests/TestSupport): the process runner, the network-namespace
        // lab and the snapshot helper. Foundation and Testing only; see docs/testing.md.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        // Snapshots are read through #filePath too (re-recording writes into the source tree).
        .testTarget(name: "NetworkAddressesTests", dependencies: ["NetworkAddresses"]),
        .testTarget(name: "ImageBuildKitTests", dependencies: ["ImageBuildKit", "TestSupport", "Yams"], exclude: ["Snapshots"]),
        // Fixtures are read through #filePath (so re-recording writes into the source tree).
        .testTarget(name: "BootProtocolsTests", dependencies: ["BootProtocols", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(
            name: "BootServerTests",
            dependencies: ["BootServer", "BootProtocols", "ImageBuildKit", "DatagramIO", "TestSupport",
                           .product(name: "HummingbirdTesting", package: "hummingbird"),
                           .product(name: "NIOEmbedded", package: "swift-nio")]
        ),
        .testTarget(name: "PowerControlTests", dependencies: ["PowerControl", "ImageBuildKit", "TestSupport"]),
        .testTarget(name: "ObjectStoreTests", dependencies: ["ObjectStore", "ImageBuildKit", "TestSupport"]),
        .testTarget(name: "EndToEndTests", dependencies: ["imagebuild", "ImageBuildKit", "TestSupport"]),
    ]
)
