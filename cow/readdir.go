package cow

import (
	"encoding/binary"
	"errors"

	"golang.org/x/sys/unix"
)

// DirEntry is one entry of a merged directory listing.
type DirEntry struct {
	Name string
	// Mode holds the file type bits only.
	Mode uint32
	Ino  uint64
}

// Readdir lists the merged directory dir at rel: every layer's entries,
// top-down, without duplicates, whiteouts or markers, and nothing from
// below an opaque directory.
func (s *Stack) Readdir(dir *Object, rel string) ([]DirEntry, error) {
	return s.readdir(dir, rel, 0)
}

// readdir is Readdir; the union's own listings (an emptiness check, a
// copy-up) pass O_NOATIME, as a user's listing does not.
func (s *Stack) readdir(dir *Object, rel string, flags int) ([]DirEntry, error) {
	var out []DirEntry
	seen := map[string]bool{}
	layers, off := s.searchLayers(dir, rel)
	ln := s.newListing(dir, layers[off:])
	for i, l := range layers {
		ents, err := readDirents(l, rel, flags)
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			continue // no upper directory yet
		}
		if err != nil {
			return nil, err
		}
		ln.add(i-off, l, ents)
		// A ".wh." marker hides a name in the layers below only.
		var hidden []string
		for _, e := range ents {
			if target, ok := markerTarget(e.name); ok {
				if target != "" {
					hidden = append(hidden, target)
				}
				continue
			}
			if seen[e.name] {
				continue
			}
			seen[e.name] = true
			st := unix.Stat_t{Ino: e.ino, Mode: dtToMode[e.typ]}
			if st.Mode == 0 || st.Mode == unix.S_IFCHR {
				// Unknown type, or maybe a whiteout: ask.
				st, err = l.lstat(join(rel, e.name))
				if errors.Is(err, unix.ENOENT) {
					continue
				}
				if err != nil {
					return nil, err
				}
				if isWhiteout(&st) {
					continue
				}
			}
			out = append(out, DirEntry{
				Name: e.name,
				Mode: st.Mode & unix.S_IFMT,
				Ino:  s.ino(l, join(rel, e.name), &st),
			})
		}
		for _, h := range hidden {
			seen[h] = true
		}
	}
	if ln != nil {
		dir.memo.names.Store(ln)
	}
	return out, nil
}

// newListing returns a lowerNames for a listing of dir, whose layers are
// layers, to fill as it reads them; nil when there is nothing to remember:
// dir has no memo, it has a listing, or dir has fewer than two lower
// layers, where a lookup costs one stat of the one with or without it.
func (s *Stack) newListing(dir *Object, layers []*Layer) *lowerNames {
	if dir.memo == nil || dir.memo.names.Load() != nil || len(layers) > 64 {
		return nil
	}
	frozen := 0
	for _, l := range layers {
		if !l.upper {
			frozen++
		}
	}
	if frozen < 2 {
		return nil
	}
	return &lowerNames{names: map[string]uint64{}, marks: map[string]uint64{}}
}

// add records the entries ents that the listing read in l, layer k of the
// directory; only lower layers are recorded, since the upper changes.
func (ln *lowerNames) add(k int, l *Layer, ents []dirent) {
	if ln == nil || k < 0 || l.upper {
		return
	}
	ln.listed |= 1 << k
	for _, e := range ents {
		if target, ok := markerTarget(e.name); ok {
			if target != "" {
				ln.marks[target] |= 1 << k
			}
			continue
		}
		ln.names[e.name] |= 1 << k
	}
}

// listing returns what the last listing of the directory o found in its
// lower layers, or nil.
func (o *Object) listing() *lowerNames {
	if o.memo == nil {
		return nil
	}
	return o.memo.names.Load()
}

// IsEmpty reports whether the merged directory dir at rel has no entries.
func (s *Stack) IsEmpty(dir *Object, rel string) (bool, error) {
	ents, err := s.readdir(dir, rel, unix.O_NOATIME)
	return len(ents) == 0, err
}

type dirent struct {
	name string
	ino  uint64
	typ  uint8
}

var dtToMode = [...]uint32{
	unix.DT_BLK:  unix.S_IFBLK,
	unix.DT_CHR:  unix.S_IFCHR,
	unix.DT_DIR:  unix.S_IFDIR,
	unix.DT_FIFO: unix.S_IFIFO,
	unix.DT_LNK:  unix.S_IFLNK,
	unix.DT_REG:  unix.S_IFREG,
	unix.DT_SOCK: unix.S_IFSOCK,
	15:           0,
}

// readDirents reads the directory at rel in l, without "." and "..".
func readDirents(l *Layer, rel string, flags int) ([]dirent, error) {
	fd, err := l.open(rel, unix.O_RDONLY|unix.O_DIRECTORY|flags, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	ents, err := direntsOf(fd)
	if err != nil {
		return nil, l.err("readdir", rel, err)
	}
	return ents, nil
}

// direntsOf reads the open directory fd, without "." and "..".
func direntsOf(fd int) ([]dirent, error) {
	var out []dirent
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return out, nil
		}
		for off := 0; off < n; {
			ino := binary.NativeEndian.Uint64(buf[off:])
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			typ := buf[off+18]
			nameb := buf[off+19 : off+reclen]
			for i, c := range nameb {
				if c == 0 {
					nameb = nameb[:i]
					break
				}
			}
			name := string(nameb)
			if name != "." && name != ".." {
				out = append(out, dirent{name: name, ino: ino, typ: typ & 15})
			}
			off += reclen
		}
	}
}

func readNames(l *Layer, rel string) ([]string, error) {
	ents, err := readDirents(l, rel, unix.O_NOATIME)
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.name
	}
	return names, err
}

// removeAll removes rel and everything below it from l (the upper or the
// work directory).
func removeAll(l *Layer, rel string) error {
	return l.in(rel, func(dirfd int, name string) error {
		if err := removeAt(dirfd, name); err != nil {
			return l.err("remove", rel, err)
		}
		return nil
	})
}

// removeAt removes name in dirfd and everything below it, never following a
// symlink.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return err
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	names, err := direntsOf(fd)
	if err == nil {
		for _, e := range names {
			if err = removeAt(fd, e.name); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}
