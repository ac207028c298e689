// BootServer: the NIO handlers and HTTP service that carry out what BootProtocols decides.
import BootProtocols
import ImageBuildKit
