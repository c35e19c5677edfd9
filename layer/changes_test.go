package layer

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestChanges checks the docker diff listing of uppers built by hand in
// the kernel's format over lowers (top-most first).
func TestChanges(t *testing.T) {
	cases := []struct {
		name   string
		lowers [][]writeOp
		upper  []writeOp
		want   []string
	}{{
		name:   "added, changed, parents",
		lowers: [][]writeOp{{fx.File("etc/passwd", "root"), fx.File("etc/group", "g")}},
		upper:  []writeOp{fx.File("etc/passwd", "root, user"), fx.File("etc/new/conf", "c"), fx.File("top", "t")},
		want:   []string{"C /etc", "A /etc/new", "A /etc/new/conf", "C /etc/passwd", "A /top"},
	}, {
		name:   "file and dir deleted: the root of the deletion only",
		lowers: [][]writeOp{{fx.File("d/f", "f"), fx.File("d/sub/x", "x"), fx.File("d/sub/y/z", "z")}},
		upper:  []writeOp{fx.Dir("d"), fx.Whiteout("d/f"), fx.Whiteout("d/sub")},
		want:   []string{"C /d", "D /d/f", "D /d/sub"},
	}, {
		name:   "opaque dir: hidden lower children deleted, re-created ones changed",
		lowers: [][]writeOp{{fx.File("d/a", "a"), fx.File("d/b", "b"), fx.File("d/sub/x", "x"), fx.File("d/sub/y", "y")}},
		upper:  []writeOp{fx.Opaque("d"), fx.File("d/b", "new b"), fx.File("d/c", "c"), fx.Dir("d/sub"), fx.File("d/sub/y", "y2")},
		want:   []string{"C /d", "D /d/a", "C /d/b", "A /d/c", "C /d/sub", "D /d/sub/x", "C /d/sub/y"},
	}, {
		name:   "opaque dir over two lowers",
		lowers: [][]writeOp{{fx.File("d/top", "t"), fx.Whiteout("d/gone")}, {fx.File("d/gone", "g"), fx.File("d/bottom", "b")}},
		upper:  []writeOp{fx.Opaque("d")},
		want:   []string{"C /d", "D /d/bottom", "D /d/top"},
	}, {
		name:   "dir replaced by file: no deletions inside",
		lowers: [][]writeOp{{fx.File("d/x", "x")}},
		upper:  []writeOp{fx.File("d", "file")},
		want:   []string{"C /d"},
	}, {
		name:   "file replaced by dir",
		lowers: [][]writeOp{{fx.File("f", "f")}},
		upper:  []writeOp{fx.Opaque("f"), fx.File("f/x", "x")},
		want:   []string{"C /f", "A /f/x"},
	}, {
		name:   "whiteouts that hide nothing",
		lowers: [][]writeOp{{fx.File("d/x", "x")}},
		upper:  []writeOp{fx.Whiteout("never"), fx.Opaque("d"), fx.Whiteout("d/x")},
		want:   []string{"C /d", "D /d/x"},
	}, {
		name:   "redundant fuse-overlayfs markers",
		lowers: [][]writeOp{{fx.File("d/x", "x"), fx.File("w/x", "x")}},
		upper: []writeOp{
			fx.Opaque("d"), fx.Marker("d/.wh..wh..opq"), fx.Whiteout("d/.wh..opq"),
			fx.Dir("w"), fx.Whiteout("w/x"), fx.Marker("w/.wh.x"),
		},
		want: []string{"C /d", "D /d/x", "C /w", "D /w/x"},
	}, {
		name:  "no lowers",
		upper: []writeOp{fx.File("a/b", "b"), fx.Whiteout("gone")},
		want:  []string{"A /a", "A /a/b"},
	}, {
		name:   "sorted by path",
		lowers: [][]writeOp{{fx.Dir("a")}},
		upper:  []writeOp{fx.File("a/b", "1"), fx.File("a.b", "2"), fx.File("a-", "3")},
		want:   []string{"C /a", "A /a-", "A /a.b", "A /a/b"},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var lowers []string
			for _, l := range c.lowers {
				lowers = append(lowers, buildLayer(t, l))
			}
			upper := buildLayer(t, c.upper)
			changes, err := Changes(upper, lowers)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, ch := range changes {
				got = append(got, string(ch.Kind)+" "+ch.Path)
			}
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("Changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

func TestChangesRefusesRedirect(t *testing.T) {
	upper := buildLayer(t, []writeOp{fx.Dir("moved"), fx.Xattr("moved", "user.overlay.redirect", "/old")})
	if _, err := Changes(upper, nil); !errors.Is(err, unix.ENOTSUP) {
		t.Errorf("Changes = %v, want ENOTSUP", err)
	}
}
