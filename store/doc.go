// Package store is the local image store: images loaded, imported,
// committed or pulled, kept where mounts find their layers.
//
// # Layout
//
// A store is an OCI image layout directory (image-spec image-layout.md),
// so OCI tools use it directly: "skopeo copy oci:STORE:NAME ..." and
// "umoci unpack --image STORE:NAME ..." read it, and "skopeo copy ...
// oci:STORE:NAME" writes into it.
//
//	oci-layout           {"imageLayoutVersion":"1.0.0"}
//	index.json           the tags: one manifest descriptor per name, its
//	                     annotation org.opencontainers.image.ref.name the
//	                     normalized name ("alpine:3.20", "myimg:latest")
//	blobs/sha256/HEX     manifests, configs and layer tars (gzip or plain),
//	                     each named after the sha256 of its bytes
//
// and our own entries, which OCI tools ignore:
//
//	layers/DIFFID-HEX/   an unpacked layer in cow's lower format, named
//	                     after its diff_id (the sha256 of the uncompressed
//	                     layer tar), derived from the layer blobs: made by
//	                     load and import, by Lowers for committed images
//	                     and those other tools put in (or adopted from a
//	                     commit's upper); the lowers of an image mount
//	staging/             work in progress, one directory per transaction
//	lock                 flock(2) serializing the writers' final steps
//	containers/*/layers  written by image mounts: the diff_ids (one per
//	                     line) of the layers a mount uses, which Remove
//	                     keeps
//
// # Names and OCI tools
//
// An image's name is its tag in index.json, normalized as docker shows
// names: a tag is always there (":latest" by default) and docker.io's
// default prefixes are dropped ("docker.io/library/alpine" is
// "alpine:latest"). skopeo splits "oci:DIR:REF" at the first colon after
// DIR, so the whole name, tag included, is the reference:
//
//	skopeo copy docker://docker.io/library/alpine:3.20 oci:STORE:alpine:3.20
//	skopeo copy oci:STORE:alpine:3.20 docker://registry.example/alpine:3.20
//	umoci unpack --image STORE:alpine:3.20 bundle
//
// A name skopeo writes without a tag ("oci:STORE:alpine") reads as
// alpine:latest here, but skopeo itself finds it only as "alpine". An
// image that skopeo copies in (from a registry, say) is unpacked by Lowers
// when first mounted. Images are moved between machines through a registry
// with skopeo, or with Save and Load.
//
// # Atomicity
//
// Data safety comes first: a failure at any point (a bad archive, a full
// disk, kill -9) leaves the store as it was. Every writer works in a
// transaction, a directory under staging/ holding an flock on its own lock
// file while it lives. New blobs and unpacked layers are written and
// verified there, then, under the store lock, the filesystem is synced,
// they are renamed into blobs/sha256/ and layers/, and index.json is
// replaced last (written to a temporary file, synced, renamed). So a reader
// sees either the old or the new index, a tag never names a missing blob,
// and no half-written blob or layer is ever under its final name.
//
// Before moving anything a transaction records what it is about to add in
// a journal; Open removes the staging directories of dead transactions
// (their flock is free) and, for a transaction killed between the moves
// and the index update, the blobs and layers its journal lists that no
// image references.
//
// Readers take no lock: index.json is only ever replaced whole. External
// writers such as skopeo do not take the lock either; do not run rmi while
// skopeo copies into the same store.
//
// # Verification
//
// Everything that enters the store is checked: each blob's sha256 and size
// against its descriptor, each layer's uncompressed sha256 against the
// config's diff_id, as many layers as diff_ids, rootfs.type "layers", and
// known media types (tar and tar+gzip, OCI and docker; zstd is refused).
// Archives are read as untrusted input: entry names and symlinks must stay
// inside the archive, names must be unique and JSON documents small.
package store
