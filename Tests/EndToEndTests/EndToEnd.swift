import Testing

/// Every end-to-end suite nests in this one so they run one after another:
/// QEMU under TCG takes a whole core, and two boots plus a build at once on a
/// 2-core machine would time out.
@Suite(.serialized) enum EndToEnd {}
