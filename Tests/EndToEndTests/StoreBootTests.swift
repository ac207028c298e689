import Foundation
import ImageBuildKit
import TestSupport
import Testing

extension EndToEnd {
    /// A real machine boots with its image from an S3-compatible store: SeaweedFS listens inside the
    /// lab's namespace on the server's address (port 8333), `imagebuild publish --store` uploads the
    /// minimal image there, and one BIOS VM boots through `imagebuild serve` (DHCP, iPXE, the bootscript
    /// endpoint rendering from publish.json, kernel and initramfs over HTTP) with stage 1 loading the
    /// image from the store. The root's own copy of the image file is removed before the boot, and the
    /// server's log must show no request for it.
    @Suite("Network boot with the image from an S3 store", .serialized,
           .enabled(if: QEMU.available && BootLab.unavailableReason == nil && SeaweedS3.unavailableReason == nil,
                    "needs qemu-system-x86_64, /dev/net/tun, network namespaces and weed in .venv-test (scripts/setup installs them): \(BootLab.unavailableReason ?? SeaweedS3.unavailableReason ?? "")"))
    struct StoreBootTests {
        static let mac = "52:54:00:77:0c:01"
        static let nodes = """
            network:
              server: 10.77.0.1
              subnet: 10.77.0.0/24
              http_port: 8080
            defaults:
              image: minimal
              loader: ipxe
            nodes:
              - {mac: "\(mac)", hostname: s3node, ip: 10.77.0.31}
            """

        @Test("one VM boots to NODE-UP with its image from the store, not from the boot server")
        func bootsFromTheStore() async throws { try await Harness.blocking { try Self().bootOnThread() } }

        func bootOnThread() throws {
            var weed: SeaweedS3?
            let site = try PXEBootTests.Site(nodes: Self.nodes) { lab in
                let store = try SeaweedS3(directory: lab.directory + "/weed", address: lab.serverAddress, port: 8333,
                                          lab: lab.lab, namespace: lab.namespace)
                weed = store
                return (["--store", "s3://boot/lab"],
                        ["AWS_ENDPOINT_URL_S3": store.endpoint, "AWS_ACCESS_KEY_ID": store.accessKey, "AWS_SECRET_ACCESS_KEY": store.secretKey])
            }
            defer { site.close() }
            let store = try #require(weed)
            let image = try #require(try PublishIndex.read(root: site.root).images["minimal"])
            let url = "http://10.77.0.1:8333/boot/lab/\(image.path)/\(image.imageFile)"
            #expect(image.storeURL == url)
            #expect(site.publishOutput.contains("uploaded to s3://boot/lab at http://10.77.0.1:8333"), "\(site.publishOutput)")
            // The boot server could not serve the image even if asked.
            try FileManager.default.removeItem(atPath: site.root + "/\(image.path)/\(image.imageFile)")

            let started = Date()
            let vm = try site.lab.startVM(name: "s3node", mac: Self.mac)
            let up = vm.wait(for: "NODE-UP \(Self.mac)", timeout: 300)
            print("store boot: NODE-UP after \(Int(Date().timeIntervalSince(started))) s (\(QEMU.accelerator))")
            #expect(up, "the node did not come up:\n\(vm.log.suffix(4000))\n--- server:\n\(site.serve.log.suffix(3000))\n--- weed:\n\(store.log.suffix(2000))")
            guard up else { return }
            #expect(vm.log.contains("[download] streaming \(url) "), "stage 1 did not load the image from the store:\n\(vm.log.suffix(3000))")
            #expect(vm.log.contains("sha256 OK"), "stage 1 did not verify the image")
            let timeline = try site.timelineWhenUp(Self.mac, bootloader: false)
            PXEBootTests.expectFullBoot(timeline, Self.mac, bootloader: false)
            let served = site.serveLogs.split(separator: "\n").filter { $0.contains(image.imageFile) && $0.contains("imagebuild.http") }
            #expect(served.isEmpty, "the boot server was asked for the image:\n\(served.joined(separator: "\n"))")
            #expect(site.serveLogs.contains("\(image.path)/vmlinuz"), "the kernel did not come from the boot server")
            // What the node was told: the bootscript endpoint renders from publish.json, store URL included.
            // (Asked last: the server counts a request for it as the machine's next boot starting.)
            let script = try Harness.shell("ip netns exec \(site.lab.namespace) curl -sf --max-time 10 'http://10.77.0.1:8080/boot/v1/bootscript?mac=\(Self.mac)'").stdout
            #expect(script.contains("imagebuild.image=\(url) "), "the boot script does not name the store:\n\(script)")
        }
    }
}
