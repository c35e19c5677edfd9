package layer

import (
	"slices"
	"strings"

	"github.com/unionmount/unionmount/cow"
	"golang.org/x/sys/unix"
)

// Changes lists the changeset of the layer directory upper over lowers
// (top-most first) as docker diff does: the merged view of the lowers
// (before) against the merged view with the upper on top (after), one
// Change per path, sorted by path. It walks the upper alone and asks the
// lowers only about the paths the upper names, reading a lower directory's
// listing only where the upper hides that whole directory, so it costs
// O(changes).
//
// The kinds, as docker's comparison of the two views gives them:
//
//   - 'A': the upper has the path and the lowers show nothing there; every
//     path inside an added directory is listed.
//   - 'C': the upper has the path and the lowers show something there,
//     also of another type (file replaced by a directory or the other way
//     round). A directory the upper holds only because something inside
//     it changed is 'C' too, as docker lists the parents of a change.
//     Being in the upper counts as a change: a file copied up and left
//     as it was is 'C' (docker's tree comparison would compare its
//     attributes and leave it out).
//   - 'D': the lowers show the path and the upper hides it: a whiteout
//     (only the path itself, nothing inside a deleted directory), or a
//     name of a directory the lowers show that an opaque upper directory
//     hides and does not re-create. A directory replaced by a file lists
//     no deletions inside it.
//
// A whiteout over nothing, or inside an opaque directory, lists nothing:
// it changes nothing the merged view shows. Paths start with "/".
func Changes(upper string, lowers []string) ([]Change, error) {
	c, err := openChangeset(upper, lowers)
	if err != nil {
		return nil, err
	}
	defer c.close()
	root, err := c.root()
	if err != nil {
		return nil, err
	}
	var out []Change
	if err := c.changes(root, &out); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Change) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}

// changes appends the changes in the directory d and below to out.
func (c *changeset) changes(d *dirState, out *[]Change) error {
	if d.before != nil && !d.shown {
		// The upper hides the lowers' directory: whatever it does
		// not re-create is deleted.
		lower, err := c.lower.Readdir(d.before, d.rel)
		if err != nil {
			return err
		}
		for _, le := range lower {
			i, found := slices.BinarySearchFunc(d.entries, le.Name, func(e cow.LayerEntry, name string) int {
				return strings.Compare(e.Name, name)
			})
			if !found || d.entries[i].Whiteout {
				*out = append(*out, Change{Kind: 'D', Path: "/" + commitJoin(d.rel, le.Name)})
			}
		}
	}
	for _, e := range d.entries {
		rel := commitJoin(d.rel, e.Name)
		before, err := c.below(d, e.Name)
		if err != nil {
			return err
		}
		if e.Whiteout {
			if d.shown && before != nil {
				*out = append(*out, Change{Kind: 'D', Path: "/" + rel})
			}
			continue
		}
		kind := byte('A')
		if before != nil {
			kind = 'C'
		}
		*out = append(*out, Change{Kind: kind, Path: "/" + rel})
		if e.Stat.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		sub, err := c.dir(rel, before, d.shown)
		if err != nil {
			return err
		}
		if err := c.changes(sub, out); err != nil {
			return err
		}
	}
	return nil
}
