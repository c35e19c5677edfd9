package layer

import (
	"archive/tar"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/unionmount/unionmount/cow"
	"golang.org/x/sys/unix"
)

// Write writes the changeset of the layer directory upper over lowers
// (top-most first) to w as a canonical, uncompressed OCI layer tar (see the
// package doc) and returns what it wrote. It reads the upper alone and asks
// the lowers only about the paths the upper names, so it costs O(changes).
//
// What the changeset holds:
//
//   - every object of the upper except the root, whole, with its mode,
//     owner (as on disk), mtime and the xattrs cow.LayerDir.Xattrs keeps
//     (security.capability of revision 3 is written as revision 2, as
//     docker does: the namespaced root it names means nothing in another
//     user namespace);
//   - "DIR/.wh..wh..opq" right after an opaque directory, only when the
//     lowers show a directory at that path for it to hide: a directory
//     that replaces a file, or that lies in a directory already hidden or
//     new, needs none;
//   - "DIR/.wh.NAME" for a whiteout, only when the lowers show NAME there
//     (so never inside an opaque or new directory): a whiteout that hides
//     nothing is left out, as the merged view does not depend on it;
//   - the other names of a file with several names in the upper as hard
//     links (type 1) to the first one written, with the same header
//     fields; names the file still has in a lower stay out (the link is
//     broken, as kernel overlayfs with index=off leaves it; Write reads
//     no work directory, so the lower names that cow's link index serves
//     a copy to must be put in the upper first to be committed);
//   - FIFOs, devices and symlinks as they are. Sockets are left out with a
//     warning (a tar cannot hold one); sparse files are written in full.
//
// A metadata-only copy (the kernel's metacopy, which unionmount writes too)
// is written whole: its metadata from the upper, its data from the file its
// path, or its overlay.redirect, names in the lowers; so a layer never holds
// a placeholder. An upper with a directory written with redirect_dir is
// refused with an error wrapping ENOTSUP. Write closes the tar but not w.
func Write(w io.Writer, upper string, lowers []string, opt Options) (Stats, error) {
	c, err := openChangeset(upper, lowers)
	if err != nil {
		return Stats{}, err
	}
	defer c.close()
	tw := tar.NewWriter(w)
	cw := &committer{changeset: c, tw: tw, opt: opt, links: map[commitInode]*tar.Header{}}
	root, err := c.root()
	if err != nil {
		return cw.stats, err
	}
	if err := cw.walk(root); err != nil {
		return cw.stats, err
	}
	if err := tw.Close(); err != nil {
		return cw.stats, fmt.Errorf("finish layer tar: %w", err)
	}
	if opt.Progress != nil {
		opt.Progress(cw.stats.Entries, cw.stats.Bytes)
	}
	return cw.stats, nil
}

// changeset is an upper layer directory over the merged view of its lowers.
type changeset struct {
	upper *cow.LayerDir
	lower *cow.LowerView
}

func openChangeset(upper string, lowers []string) (*changeset, error) {
	u, err := cow.OpenLayerDir(upper)
	if err != nil {
		return nil, err
	}
	l, err := cow.OpenLowerView(lowers)
	if err != nil {
		u.Close()
		return nil, err
	}
	return &changeset{upper: u, lower: l}, nil
}

func (c *changeset) close() {
	c.upper.Close()
	c.lower.Close()
}

// dirState is a directory of the upper during a walk.
type dirState struct {
	rel string
	// entries and opaque are the upper directory's, from ReadDir.
	entries []cow.LayerEntry
	opaque  bool
	// before is the directory the lowers show at rel, nil if they show
	// none: what the directory was before the changes.
	before *cow.Object
	// parentShown reports whether the lowers show through the upper at
	// rel's parent (no opaque directory on the way); shown whether they
	// show through at rel too (rel is not opaque either).
	parentShown, shown bool
}

func (c *changeset) root() (*dirState, error) {
	before, err := c.lower.Root()
	if err != nil {
		return nil, err
	}
	return c.dir("", before, true)
}

// dir reads the upper directory at rel; before and parentShown as in
// dirState. A before that is not a directory counts as none.
func (c *changeset) dir(rel string, before *cow.Object, parentShown bool) (*dirState, error) {
	ents, opaque, err := c.upper.ReadDir(rel)
	if err != nil {
		return nil, err
	}
	if before != nil && !before.IsDir() {
		before = nil
	}
	return &dirState{
		rel: rel, entries: ents, opaque: opaque, before: before,
		parentShown: parentShown, shown: parentShown && !opaque,
	}, nil
}

// below returns what the lowers show at name in d, nil if nothing.
func (c *changeset) below(d *dirState, name string) (*cow.Object, error) {
	return c.lower.Lookup(d.before, d.rel, name)
}

// hidesLower reports whether the upper directory d hides a directory of
// the lowers: it needs an opaque marker in a layer.
func (d *dirState) hidesLower() bool { return d.opaque && d.parentShown && d.before != nil }

func commitJoin(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

type commitInode struct{ dev, ino uint64 }

// committer writes one layer tar.
type committer struct {
	*changeset
	tw    *tar.Writer
	opt   Options
	stats Stats
	// links maps a file with several names to the header of the first
	// name written.
	links map[commitInode]*tar.Header
	// lastProgress is stats.Entries at the last Progress call.
	lastProgress int
}

// walk writes the entries of the directory d and of everything below it.
func (cw *committer) walk(d *dirState) error {
	if d.hidesLower() {
		if err := cw.marker(commitJoin(d.rel, cow.OCIOpaqueMarker)); err != nil {
			return err
		}
	}
	if d.shown && d.before != nil {
		for _, e := range d.entries {
			if !e.Whiteout {
				continue
			}
			o, err := cw.below(d, e.Name)
			if err != nil {
				return err
			}
			if o != nil {
				if err := cw.marker(commitJoin(d.rel, cow.OCIWhiteoutPrefix+e.Name)); err != nil {
					return err
				}
			}
		}
	}
	for _, e := range d.entries {
		if e.Whiteout {
			continue
		}
		rel := commitJoin(d.rel, e.Name)
		if err := cw.entry(rel, &e.Stat); err != nil {
			return err
		}
		if e.Stat.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		var before *cow.Object
		if d.shown {
			// Below a hidden directory nothing of the lowers
			// matters to a layer.
			o, err := cw.below(d, e.Name)
			if err != nil {
				return err
			}
			before = o
		}
		sub, err := cw.dir(rel, before, d.shown)
		if err != nil {
			return err
		}
		if err := cw.walk(sub); err != nil {
			return err
		}
	}
	return nil
}

// marker writes a whiteout or opaque marker entry: an empty regular file
// with mode 0, owner 0:0 and mtime 0, so that it is the same whatever
// wrote the upper.
func (cw *committer) marker(name string) error {
	return cw.write(&tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatPAX,
	})
}

// entry writes the object st at rel, with its data for a regular file.
func (cw *committer) entry(rel string, st *unix.Stat_t) error {
	typ := st.Mode & unix.S_IFMT
	if typ == unix.S_IFSOCK {
		if cw.opt.Warn != nil {
			cw.opt.Warn(fmt.Sprintf("%s: socket left out of the layer (a tar cannot hold a socket)", rel))
		}
		return nil
	}
	key := commitInode{st.Dev, st.Ino}
	if typ != unix.S_IFDIR && st.Nlink > 1 {
		if first, ok := cw.links[key]; ok {
			return cw.write(linkHeader(first, rel))
		}
	}
	h, err := header(rel, st, cw.opt.Epoch,
		func() (string, error) { return cw.upper.Readlink(rel) },
		func() ([]cow.Xattr, error) { return cw.upper.Xattrs(rel) })
	if err != nil {
		return err
	}
	if typ != unix.S_IFDIR && st.Nlink > 1 {
		cw.links[key] = h
	}
	if err := cw.write(h); err != nil {
		return err
	}
	if typ == unix.S_IFREG {
		cw.stats.Files++
		return cw.data(rel, st.Size)
	}
	return nil
}

// open opens the data of the regular file rel of the upper: the file
// itself, or for a metadata-only copy (overlay.metacopy) the file its data
// is in, in the lowers.
func (cw *committer) open(rel string) (*os.File, error) {
	origin, meta, err := cw.upper.MetacopyOrigin(rel)
	if err != nil {
		return nil, err
	}
	if !meta {
		return cw.upper.Open(rel)
	}
	f, err := cw.lower.OpenFile(origin)
	if err != nil {
		return nil, fmt.Errorf("%s is a metadata-only copy: read its data: %w", rel, err)
	}
	return f, nil
}

// write writes the header h.
func (cw *committer) write(h *tar.Header) error {
	if err := cw.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("write layer entry %s: %w", h.Name, err)
	}
	cw.stats.Entries++
	if cw.opt.Progress != nil && cw.stats.Entries-cw.lastProgress >= 1000 {
		cw.lastProgress = cw.stats.Entries
		cw.opt.Progress(cw.stats.Entries, cw.stats.Bytes)
	}
	return nil
}

// data copies size bytes of the regular file rel into the tar; holes are
// read as zeros.
func (cw *committer) data(rel string, size int64) error {
	if size == 0 {
		return nil
	}
	f, err := cw.open(rel)
	if err != nil {
		return err
	}
	defer f.Close()
	// In chunks, so that a big file shows progress.
	const chunk = 64 << 20
	for done := int64(0); done < size; {
		n, err := io.CopyN(cw.tw, f, min(chunk, size-done))
		done += n
		cw.stats.Bytes += n
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s: shrank to %d bytes while being written to the layer", f.Name(), done)
		}
		if err != nil {
			return fmt.Errorf("write %s to the layer: %w", f.Name(), err)
		}
		if cw.opt.Progress != nil && done < size {
			cw.opt.Progress(cw.stats.Entries, cw.stats.Bytes)
		}
	}
	return nil
}

// capRevision2 returns a security.capability value of revision 3 (Linux
// 4.14's namespaced file capabilities: revision 2 plus the root uid of the
// namespace) as revision 2 with the same capabilities, and any other value
// as it is (include/uapi/linux/capability.h: VFS_CAP_REVISION_MASK and
// struct vfs_ns_cap_data).
func capRevision2(v []byte) []byte {
	const (
		revisionMask = 0xFF000000
		revision2    = 0x02000000
		revision3    = 0x03000000
		size2        = 20
		size3        = 24
	)
	if len(v) != size3 || binary.LittleEndian.Uint32(v)&revisionMask != revision3 {
		return v
	}
	out := slices.Clone(v[:size2])
	binary.LittleEndian.PutUint32(out, binary.LittleEndian.Uint32(v)&^revisionMask|revision2)
	return out
}
