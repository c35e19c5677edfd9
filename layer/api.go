package layer

import (
	"io"
	"time"
)

// Options tune Write and Export.
type Options struct {
	// Epoch, when set, clamps every mtime to at most this time
	// (SOURCE_DATE_EPOCH).
	Epoch *time.Time
	// Warn, when set, receives one line for each entry left out, such as
	// a socket.
	Warn func(msg string)
	// Progress, when set, is called now and then with the entries and
	// file data bytes done so far.
	Progress func(entries int, bytes int64)
}

// Stats counts what a conversion wrote or read.
type Stats struct {
	// Entries counts the tar entries, whiteouts and markers included.
	Entries int
	// Files counts regular files.
	Files int
	// Bytes counts regular file data.
	Bytes int64
}

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// UserXattr writes opaque directories with user.overlay.opaque, as
	// cow's userxattr mode reads them; otherwise trusted.overlay.opaque.
	UserXattr bool
	// Rootless unpacks as an unprivileged user: device nodes become
	// empty regular files (placeholders) and ownership and xattrs that
	// cannot be set are dropped, each with a warning.
	Rootless bool
	// Warn and Progress as in Options.
	Warn     func(msg string)
	Progress func(entries int, bytes int64)
}

// Change is one line of a docker diff listing.
type Change struct {
	// Kind is 'A' (added), 'C' (changed) or 'D' (deleted).
	Kind byte
	// Path is the merged path, with a leading "/".
	Path string
}

var _ = io.EOF
