// Package cow is the union engine of unionmount: the layer stack, lookup
// across layers, copy-up, whiteouts, opaque directories and the merged
// directory listing. It has no FUSE imports; package fs adapts it to go-fuse.
//
// # Model
//
// A stack is one optional writable upper layer over one or more read-only
// lower layers, leftmost (index 0) on top. The merged view of a path is the
// topmost layer that has it, unless a whiteout or an opaque directory above
// hides it. Lower layers are never modified.
//
// # Glossary
//
//   - lower: a read-only directory tree in the stack.
//   - upper: the writable directory tree on top; every change lands here.
//   - merged: the view the union presents.
//   - layer: a lower or the upper.
//   - copy-up: copying an object from a lower into the upper before it is
//     changed, built in the workdir and renamed into place.
//   - whiteout: an upper (or lower) entry that hides a name in every layer
//     below it.
//   - opaque: a directory that hides the directories of the same path in
//     every layer below it.
//   - commit: freezing the upper into a new lower layer.
//
// # On-disk format
//
// The format is kernel overlayfs's (Documentation/filesystems/overlayfs.rst);
// format.go is the only file that knows its encodings.
package cow
