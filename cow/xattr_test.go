package cow

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestXattrSources reads the same xattrs through the *at calls and through
// /proc paths (the kernels before 6.13), at the root, at a depth, through
// a symlink that must not be followed, and with a value larger than the
// first buffer.
func TestXattrSources(t *testing.T) {
	if !haveXattrAt() {
		t.Skip("the kernel has no getxattrat(2) (Linux 6.13); only the /proc path is in use")
	}
	dir := t.TempDir()
	big := strings.Repeat("v", 1000)
	if err := os.MkdirAll(filepath.Join(dir, "a/b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "a/b/f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("b/f", filepath.Join(dir, "a/link")); err != nil {
		t.Fatal(err)
	}
	for p, v := range map[string]string{"": "root", "a/b/f": big} {
		if err := unix.Lsetxattr(filepath.Join(dir, p), "user.k", []byte(v), 0); err != nil {
			t.Skipf("no user xattrs on %s: %v", dir, err)
		}
	}
	l, err := openLayer(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	orig := haveXattrAt
	t.Cleanup(func() { haveXattrAt = orig })

	type result struct {
		val   string
		names []string
		err   error
	}
	read := func(rel string) result {
		var r result
		r.err = l.readXattrs(rel, func(x xattrSource) error {
			v, err := x.get("user.k")
			r.val = string(v)
			if err != nil {
				return err
			}
			r.names, err = x.list()
			return err
		})
		return r
	}
	want := map[string]result{"": {val: "root"}, "a/b/f": {val: big}, "a/link": {}, "a/b": {}}
	for _, at := range []bool{true, false} {
		haveXattrAt = func() bool { return at }
		for rel, w := range want {
			got := read(rel)
			if w.val == "" {
				if !errors.Is(got.err, unix.ENODATA) {
					t.Errorf("at=%v %q: err %v, want ENODATA", at, rel, got.err)
				}
				continue
			}
			if got.err != nil || got.val != w.val || !slices.Contains(got.names, "user.k") {
				t.Errorf("at=%v %q: %.20q %v %v, want %.20q and user.k listed", at, rel, got.val, got.names, got.err, w.val)
			}
		}
	}
}
