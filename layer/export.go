package layer

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/unionmount/unionmount/cow"
	"golang.org/x/sys/unix"
)

// Export writes the merged view of layers (directories in cow's format,
// top-most first, such as an image's unpacked layers, or one plain
// directory such as a mount point) as one plain rootfs tar, as docker
// export does: no whiteouts, no opaque markers, no overlay xattrs, just
// the tree a union of those layers shows.
//
// The tar has the canonical form of a layer (see the package doc): PAX
// headers, depth-first order with each directory's entries sorted by name,
// whole-second mtimes clamped to opt.Epoch, no atime or ctime, empty user
// and group names, no entry for the root. Names of one file within a layer
// (same device and inode) become hard links to the first name written,
// with the same header. Xattrs are those a layer carries (see
// cow.LayerDir.Xattrs). Sockets are left out with a warning. A plain
// directory is read in cow's format too: its 0/0 character devices and
// ".wh." names are taken for markers and hidden.
func Export(w io.Writer, layers []string, opt Options) (Stats, error) {
	e := &exporter{
		tw:    tar.NewWriter(w),
		opt:   opt,
		dirs:  map[*cow.Layer]*cow.LayerDir{},
		links: map[exportKey]*tar.Header{},
	}
	defer e.close()
	if len(layers) > 0 {
		s, err := cow.Open(cow.Config{Lowers: layers})
		if err != nil {
			return e.stats, fmt.Errorf("export: %w", err)
		}
		e.s = s
		root, err := s.Root()
		if err != nil {
			return e.stats, fmt.Errorf("export: %w", err)
		}
		if err := e.walk(root, ""); err != nil {
			return e.stats, fmt.Errorf("export: %w", err)
		}
	}
	if err := e.tw.Close(); err != nil {
		return e.stats, fmt.Errorf("export: %w", err)
	}
	if opt.Progress != nil {
		opt.Progress(e.stats.Entries, e.stats.Bytes)
	}
	return e.stats, nil
}

// exportKey identifies a file with several names: within one layer, by
// device and inode number.
type exportKey struct {
	layer    *cow.Layer
	dev, ino uint64
}

// exporter is the state of one Export.
type exporter struct {
	s     *cow.Stack
	tw    *tar.Writer
	opt   Options
	stats Stats
	// dirs are the layers opened on their own, for their xattrs.
	dirs map[*cow.Layer]*cow.LayerDir
	// links maps a file with several names to the header of the first
	// name written.
	links        map[exportKey]*tar.Header
	lastProgress int
}

func (e *exporter) close() {
	for _, d := range e.dirs {
		d.Close()
	}
	if e.s != nil {
		e.s.Close()
	}
}

func exportJoin(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// walk writes the entries of the merged directory dir at rel, and of
// everything below, depth-first, sorted by name.
func (e *exporter) walk(dir *cow.Object, rel string) error {
	ents, err := e.s.Readdir(dir, rel)
	if err != nil {
		return err
	}
	slices.SortFunc(ents, func(a, b cow.DirEntry) int { return strings.Compare(a.Name, b.Name) })
	for _, ent := range ents {
		crel := exportJoin(rel, ent.Name)
		o, st, err := e.s.LookupStat(dir, rel, ent.Name)
		if errors.Is(err, unix.ENOENT) {
			continue // removed since the listing (a live directory)
		}
		if err != nil {
			return err
		}
		if err := e.entry(o, crel, &st); err != nil {
			return err
		}
		if o.IsDir() {
			if err := e.walk(o, crel); err != nil {
				return err
			}
		}
	}
	return nil
}

// entry writes the merged object o at rel, with its data for a regular
// file.
func (e *exporter) entry(o *cow.Object, rel string, st *unix.Stat_t) error {
	typ := st.Mode & unix.S_IFMT
	if typ == unix.S_IFSOCK {
		if e.opt.Warn != nil {
			e.opt.Warn(fmt.Sprintf("%s: socket left out of the export (a tar cannot hold a socket)", rel))
		}
		return nil
	}
	key := exportKey{o.Layer, st.Dev, st.Ino}
	several := typ != unix.S_IFDIR && st.Nlink > 1
	if several {
		if first, ok := e.links[key]; ok {
			return e.write(linkHeader(first, rel))
		}
	}
	h, err := header(rel, st, e.opt.Epoch,
		func() (string, error) { return e.s.Readlink(o, rel) },
		func() ([]cow.Xattr, error) { return e.xattrs(o, rel) })
	if err != nil {
		return err
	}
	if several {
		e.links[key] = h
	}
	if err := e.write(h); err != nil {
		return err
	}
	if typ == unix.S_IFREG {
		e.stats.Files++
		return e.data(o, rel, st.Size)
	}
	return nil
}

// xattrs returns the xattrs a layer would carry for o at rel, read from
// o's layer on its own: the merged view shows them as they are there.
func (e *exporter) xattrs(o *cow.Object, rel string) ([]cow.Xattr, error) {
	d, ok := e.dirs[o.Layer]
	if !ok {
		var err error
		if d, err = cow.OpenLayerDir(o.Layer.Dir); err != nil {
			return nil, err
		}
		e.dirs[o.Layer] = d
	}
	return d.Xattrs(rel)
}

// write writes the header h.
func (e *exporter) write(h *tar.Header) error {
	if err := e.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("write entry %s: %w", h.Name, err)
	}
	e.stats.Entries++
	if e.opt.Progress != nil && e.stats.Entries-e.lastProgress >= 1000 {
		e.lastProgress = e.stats.Entries
		e.opt.Progress(e.stats.Entries, e.stats.Bytes)
	}
	return nil
}

// data copies size bytes of the regular file o at rel into the tar.
func (e *exporter) data(o *cow.Object, rel string, size int64) error {
	if size == 0 {
		return nil
	}
	fd, _, err := e.s.Open(o, rel, unix.O_RDONLY)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	n, err := io.CopyN(e.tw, f, size)
	e.stats.Bytes += n
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: shrank to %d bytes while being exported", rel, n)
	}
	if err != nil {
		return fmt.Errorf("export %s: %w", rel, err)
	}
	return nil
}
