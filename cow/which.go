package cow

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Source says where a path of the merged view comes from: the layer that
// serves it, or the whiteout or opaque directory that hides it.
type Source struct {
	// Path is the merged path asked about, relative to the root.
	Path string
	// Layer is the directory of the layer that serves Path; for a
	// hidden path, of the layer holding what hides it.
	Layer string
	// Merged lists, for a directory, the lower layers whose directories
	// show through it, top-most first.
	Merged []string `json:",omitempty"`
	// Hidden is set when no layer serves Path; By then says what hides
	// it and At where, relative to Layer.
	Hidden bool   `json:",omitempty"`
	By     string `json:",omitempty"`
	At     string `json:",omitempty"`
	// Below names the layer that holds a hidden Path, if any does.
	Below string `json:",omitempty"`
	// Index is set when Path is a hard link served from the link index.
	Index bool `json:",omitempty"`
	// Data names, for a metadata-only copy in Layer, the layer that
	// holds its data, and DataPath its path there; Data is empty when
	// no layer does.
	Metacopy bool   `json:",omitempty"`
	Data     string `json:",omitempty"`
	DataPath string `json:",omitempty"`
}

// Which tells where the merged path rel comes from. A path that no layer
// has at all is an ENOENT error.
func (s *Stack) Which(rel string) (Source, error) {
	src := Source{Path: rel}
	o, err := s.lookupPath(rel)
	if err == nil {
		src.Layer = o.Layer.Dir
		if o.indexName != "" {
			src.Index = true
			src.Layer = o.Lowers[0].Dir
		}
		if o.meta {
			src.Metacopy, src.DataPath = true, o.dataRel
			if o.data != nil {
				src.Data = o.data.Dir
			}
		}
		if o.IsDir() {
			for _, l := range o.Lowers {
				src.Merged = append(src.Merged, l.Dir)
			}
		}
		return src, nil
	}
	if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
		return src, err
	}
	// Hidden, or absent: find the top-most layer that has rel, then the
	// top-most layer above it that hides it.
	layers := s.layers()
	below := -1
	for i, l := range layers {
		if st, err := l.lstat(rel); err == nil && !isWhiteout(&st) {
			below = i
			break
		}
	}
	if below < 0 {
		return src, &os.PathError{Op: "which", Path: rel, Err: fmt.Errorf("no layer has it: %w", unix.ENOENT)}
	}
	src.Hidden, src.Below = true, layers[below].Dir
	for _, l := range layers[:below] {
		if by, at, ok := l.hides(rel); ok {
			src.Layer, src.By, src.At = l.Dir, by, at
			return src, nil
		}
	}
	// Hidden by a non-directory where a parent should be.
	src.By = "a file in place of a parent directory"
	return src, nil
}

// hides reports whether l hides rel from the layers below: by a whiteout
// of rel or of a parent, by an opaque parent directory, or by a parent
// that is not a directory.
func (l *Layer) hides(rel string) (by, at string, ok bool) {
	for p := rel; p != ""; {
		dir, name := split(p)
		st, err := l.lstat(p)
		switch {
		case err == nil && isWhiteout(&st):
			return "whiteout", p, true
		case err != nil && l.hasMarker(dir, name):
			return "whiteout", join(dir, whiteoutName(name)), true
		case err == nil && p != rel && st.Mode&unix.S_IFMT != unix.S_IFDIR:
			return fmt.Sprintf("non-directory %s", p), p, true
		}
		if p != rel && err == nil {
			if opaque, _ := l.isOpaque(p); opaque {
				return "opaque directory", p, true
			}
		}
		p = dir
	}
	return "", "", false
}

// lookupPath walks the merged view from the root to rel.
func (s *Stack) lookupPath(rel string) (*Object, error) {
	o, err := s.Root()
	if err != nil || rel == "" {
		return o, err
	}
	cur := ""
	for _, name := range splitPath(rel) {
		if o, err = s.Lookup(o, cur, name); err != nil {
			return nil, err
		}
		cur = join(cur, name)
	}
	return o, nil
}

func splitPath(rel string) []string {
	var names []string
	start := 0
	for i := 0; i <= len(rel); i++ {
		if i == len(rel) || rel[i] == '/' {
			if i > start {
				names = append(names, rel[start:i])
			}
			start = i + 1
		}
	}
	return names
}

// Layers returns the upper ("" for none) and the lowers, top-most first,
// and how many of the lowers at the top were committed (commit.go).
func (s *Stack) Layers() (upper string, lowers []string, committed int) {
	if s.upper != nil {
		upper = s.upper.Dir
	}
	for _, l := range s.lowers {
		lowers = append(lowers, l.Dir)
		if l.committed {
			committed++
		}
	}
	return upper, lowers, committed
}
