package cow

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestChangesStayInsideTheLayer swaps a directory of the upper for a symlink
// to a directory outside it, as a concurrent rename and symlink through the
// mount could between a lookup and the change that follows it. Every change
// made through the stale objects must fail rather than follow the symlink.
func TestChangesStayInsideTheLayer(t *testing.T) {
	ts := newTestStack(t, []entry{dir("a"), file("a/x", "upper x\n")}, []entry{dir("a"), file("a/y", "lower y\n")})
	dir, dirRel, _, x := ts.at(t, "a/x")
	y := ts.mustLookup(t, "a/y")

	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "x"), []byte("outside\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ua := filepath.Join(ts.upper, "a")
	if err := os.Rename(ua, ua+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, ua); err != nil {
		t.Fatal(err)
	}

	mode := uint32(0o600)
	checks := []struct {
		name string
		err  error
	}{
		{"unlink", ts.Unlink(dir, dirRel, "x", x)},
		{"create", func() error {
			fd, _, _, err := ts.Create(dir, dirRel, "new", unix.O_WRONLY, 0o644, Owner{})
			if err == nil {
				unix.Close(fd)
			}
			return err
		}()},
		{"mkdir", func() error {
			_, err := ts.Make(dir, dirRel, "d", NewObject{Mode: unix.S_IFDIR | 0o755}, Owner{})
			return err
		}()},
		{"chmod", func() error { _, _, err := ts.Setattr(x, "a/x", Attr{Mode: &mode, FromHandle: -1}); return err }()},
		{"rename", func() error {
			_, err := ts.Rename(dir, dirRel, "x", x, dir, dirRel, "z", nil, 0)
			return err
		}()},
		{"whiteout", ts.Unlink(dir, dirRel, "y", y)},
	}
	for _, c := range checks {
		if c.err == nil {
			t.Errorf("%s through a swapped-in symlink succeeded", c.name)
		} else if !errors.Is(c.err, unix.ELOOP) && !errors.Is(c.err, unix.ENOTDIR) && !errors.Is(c.err, unix.EXDEV) {
			t.Logf("%s: %v", c.name, c.err)
		}
	}
	ents, err := os.ReadDir(outside)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "x" {
		t.Errorf("the directory outside the layer now holds %v", ents)
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "x")); string(b) != "outside\n" {
		t.Errorf("the file outside the layer now reads %q", b)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(outside, "x"), &st); err != nil || st.Mode&0o777 != 0o644 {
		t.Errorf("the file outside the layer changed mode: %o, %v", st.Mode&0o777, err)
	}
	// Put the upper back so the stack's own checks pass at cleanup.
	os.Remove(ua)
	os.Rename(ua+".moved", ua)
}

// TestCreateInSetgidDir checks that a new object gets a setgid parent's
// group, and a new directory its setgid bit, as the filesystem gives them,
// also when the object replaces a whiteout and so is built in the work
// directory and moved in.
func TestCreateInSetgidDir(t *testing.T) {
	requireRoot(t)
	ts := newTestStack(t,
		[]entry{dir("g"), whiteout("g/wf"), whiteout("g/wd")},
		[]entry{dir("g"), file("g/wf", "lower"), dir("g/wd")})
	g := filepath.Join(ts.upper, "g")
	if err := os.Chown(g, 0, 1000); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(g, 0o2775); err != nil {
		t.Fatal(err)
	}
	dir := ts.mustLookup(t, "g")
	for _, name := range []string{"nf", "wf"} {
		fd, _, _, err := ts.Create(dir, "g", name, unix.O_WRONLY, 0o644, Owner{UID: 0, GID: 0})
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
	}
	for _, name := range []string{"nd", "wd"} {
		if _, err := ts.Make(dir, "g", name, NewObject{Mode: unix.S_IFDIR | 0o755}, Owner{UID: 0, GID: 0}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"nf", "wf", "nd", "wd"} {
		st := lstat(t, filepath.Join(g, name))
		if st.Gid != 1000 {
			t.Errorf("%s: group %d, want the setgid parent's 1000", name, st.Gid)
		}
		if isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR; isDir && st.Mode&unix.S_ISGID == 0 {
			t.Errorf("%s: directory without the setgid bit of its parent", name)
		}
	}
}
