// Package layer converts between layer directories and OCI layer tars
// (image-spec layer.md): it writes the changeset of an upper as a canonical
// layer tar (commit), lists that changeset as docker diff does, unpacks a
// layer tar into a lower directory (load, import, pull), and flattens a
// stack of layers into one plain rootfs tar (export).
//
// # Model
//
// A layer directory is one layer of a stack in the on-disk format of
// package cow (kernel overlayfs's: whiteouts are 0/0 character devices,
// opaque directories carry the overlay.opaque xattr; the ".wh." forms of
// OCI layers and fuse-overlayfs are read too). cow alone knows those
// encodings; this package asks it through cow.LayerDir.
//
// A layer tar is the same changeset in OCI form: PAX headers, relative
// names, a whiteout as an empty regular file ".wh.NAME", an opaque
// directory as "DIR/.wh..wh..opq". Its diff_id is the sha256 of the
// uncompressed tar; callers hash and compress what Write produces.
//
// # Canonical form
//
// Write is deterministic: the same tree gives the same bytes, so the same
// changes committed twice give the same diff_id. Entries come in depth-first
// order, a directory before its children; in each directory the opaque
// marker first, then the whiteouts, then the other entries, each group
// sorted by name. Times are whole seconds (clamped to Options.Epoch when
// set), atime and ctime are left out, uname and gname are empty, and
// whiteouts carry mtime 0, mode 0 and owner 0:0.
package layer
