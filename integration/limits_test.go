package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLongNamesAndPaths works at the limits: 255-byte names, and a path
// through the mount of PATH_MAX-1 bytes, with the deep directories only in
// a lower, so a write copies up a whole chain of long-named parents.
func TestLongNamesAndPaths(t *testing.T) {
	lowers, upper, mnt := semStack(t, 1)
	// Directories with 255-byte names until the merged path is close to
	// PATH_MAX; the layer's own path is as long (same parent).
	var rel []string
	for i := 0; len(mnt)+len(strings.Join(rel, "/"))+2*256 < unix.PathMax-1; i++ {
		rel = append(rel, strings.Repeat(string(rune('a'+i%26)), 255))
	}
	// One more, shorter, so that a 255-byte name below it ends exactly at
	// PATH_MAX-1 bytes.
	if rem := unix.PathMax - 1 - (len(mnt) + 1 + len(strings.Join(rel, "/"))) - 1 - 255 - 1; rem > 0 {
		rel = append(rel, strings.Repeat("m", rem))
	}
	deep := filepath.Join(rel...)
	if err := os.MkdirAll(filepath.Join(lowers[0], deep), 0o755); err != nil {
		t.Fatal(err)
	}
	semWrite(t, filepath.Join(lowers[0], deep, "f"), "lower\n", 0o644)
	semMount(t, lowers, upper, mnt)

	mdeep := filepath.Join(mnt, deep)
	// The longest name that still fits: path length PATH_MAX-1.
	long := strings.Repeat("z", min(255, unix.PathMax-1-len(mdeep)-1))
	longPath := mdeep + "/" + long
	t.Logf("deepest path: %d bytes, %d levels, last name %d bytes", len(longPath), len(rel), len(long))
	if len(longPath) != unix.PathMax-1 || len(long) != 255 {
		t.Fatalf("path %d bytes long, last name %d; want %d and 255", len(longPath), len(long), unix.PathMax-1)
	}

	f, err := os.OpenFile(filepath.Join(mdeep, "f"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("appended\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := mustRead(t, filepath.Join(mdeep, "f")); got != "lower\nappended\n" {
		t.Errorf("deep file reads %q", got)
	}
	if err := os.WriteFile(longPath, []byte("long"), 0o644); err != nil {
		t.Fatalf("create a %d-byte path: %v", len(longPath), err)
	}
	if got := mustRead(t, longPath); got != "long" {
		t.Errorf("long path reads %q", got)
	}
	if err := os.Rename(longPath, longPath[:len(longPath)-1]+"y"); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(mdeep)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{"f", long[:len(long)-1] + "y"}; strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("deep directory lists %d entries %q, want %q", len(names), names, want)
	}
	if err := os.Remove(filepath.Join(mdeep, "f")); err != nil {
		t.Fatal(err)
	}
	// The upper holds the copied-up chain and a whiteout at the bottom.
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, deep, "f"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("upper has no whiteout for the deep file: %v, mode %o", err, st.Mode)
	}
	if got := mustRead(t, filepath.Join(lowers[0], deep, "f")); got != "lower\n" {
		t.Errorf("lower changed: %q", got)
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestFileSyscalls checks the file operations beyond read and write
// through the mount: statfs, fsync/fdatasync, copy_file_range, flock and
// SEEK_DATA/SEEK_HOLE.
func TestFileSyscalls(t *testing.T) {
	lowers, upper, mnt := semStack(t, 1)
	semWrite(t, filepath.Join(lowers[0], "src"), strings.Repeat("0123456789", 1000), 0o644)
	sparse, err := os.Create(filepath.Join(lowers[0], "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	const mib = 1 << 20
	if _, err := sparse.WriteAt([]byte("data"), 8*mib); err != nil {
		t.Fatal(err)
	}
	sparse.Truncate(16 * mib)
	sparse.Close()
	semMount(t, lowers, upper, mnt)

	t.Run("statfs reports the upper", func(t *testing.T) {
		var got, want unix.Statfs_t
		if err := unix.Statfs(mnt, &got); err != nil {
			t.Fatal(err)
		}
		if err := unix.Statfs(upper, &want); err != nil {
			t.Fatal(err)
		}
		if got.Blocks != want.Blocks || got.Bsize != want.Bsize || got.Files != want.Files || got.Namelen != 255 {
			t.Errorf("statfs: blocks %d bsize %d files %d namelen %d; upper has %d %d %d",
				got.Blocks, got.Bsize, got.Files, got.Namelen, want.Blocks, want.Bsize, want.Files)
		}
	})
	t.Run("copy_file_range from a lower file", func(t *testing.T) {
		in, err := os.Open(filepath.Join(mnt, "src"))
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		out, err := os.Create(filepath.Join(mnt, "dst"))
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		total := 0
		for total < 10000 {
			n, err := unix.CopyFileRange(int(in.Fd()), nil, int(out.Fd()), nil, 10000-total, 0)
			if err != nil {
				t.Fatalf("copy_file_range: %v", err)
			}
			if n == 0 {
				break
			}
			total += n
		}
		if err := unix.Fdatasync(int(out.Fd())); err != nil {
			t.Errorf("fdatasync: %v", err)
		}
		if err := unix.Fsync(int(out.Fd())); err != nil {
			t.Errorf("fsync: %v", err)
		}
		if mustRead(t, filepath.Join(upper, "dst")) != mustRead(t, filepath.Join(lowers[0], "src")) {
			t.Error("the copy in the upper differs from its source")
		}
	})
	t.Run("flock", func(t *testing.T) {
		a, err := os.Open(filepath.Join(mnt, "src"))
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		b, err := os.Open(filepath.Join(mnt, "src"))
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if err := unix.Flock(int(a.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(int(b.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != unix.EWOULDBLOCK {
			t.Errorf("second exclusive flock: %v, want EWOULDBLOCK", err)
		}
	})
	t.Run("SEEK_DATA and SEEK_HOLE", func(t *testing.T) {
		for _, copied := range []bool{false, true} {
			p := filepath.Join(mnt, "sparse")
			if copied {
				if err := os.Chmod(p, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			fd, err := unix.Open(p, unix.O_RDONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			data, err := unix.Seek(fd, 0, unix.SEEK_DATA)
			hole, herr := unix.Seek(fd, 0, unix.SEEK_HOLE)
			unix.Close(fd)
			if err != nil || herr != nil || data < 4*mib || data > 8*mib || hole != 0 {
				t.Errorf("copied up %v: SEEK_DATA %d (%v), SEEK_HOLE %d (%v); want data near 8 MiB, hole at 0", copied, data, err, hole, herr)
			}
		}
		if got, err := os.ReadFile(filepath.Join(mnt, "sparse")); err != nil || !bytes.Equal(got[8*mib:8*mib+4], []byte("data")) || len(got) != 16*mib {
			t.Errorf("sparse file content wrong after copy-up: %v", err)
		}
	})
}
