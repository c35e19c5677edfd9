package integration

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/unionmount/unionmount/layer"
	"golang.org/x/sys/unix"
)

// metacopyPattern returns n bytes that differ at every offset from a
// shifted copy.
func metacopyPattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+i/251) ^ seed
	}
	return b
}

// noDataBlocks reports whether the file p has no data extents.
func noDataBlocks(t *testing.T, p string) bool {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	_, err = unix.Seek(fd, 0, unix.SEEK_DATA)
	return errors.Is(err, unix.ENXIO)
}

// kernelMount mounts kernel overlayfs on mnt with opts and unmounts it in
// t.Cleanup (or when the returned function is called).
func kernelMount(t *testing.T, opts, mnt string) func() {
	t.Helper()
	if out, err := exec.Command("mount", "-t", "overlay", "overlay", "-o", opts, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount -t overlay -o %s: %v: %s", opts, err, out)
	}
	done := false
	umount := func() {
		if !done {
			done = true
			if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v: %s", mnt, err, out)
			}
		}
	}
	t.Cleanup(umount)
	return umount
}

// TestMetacopy: a chmod of a 64 MiB lower file through the mount copies no
// data (the upper file has no data blocks and carries the kernel's
// metacopy xattr); reads are right; kernel overlayfs, the oracle, refuses
// the upper with its default options (EPERM, never the placeholder's
// zeros) and shows the same data and metadata with metacopy=on,
// redirect_dir=on, also for a renamed file (redirect); the first write
// copies the data; and a commit gives a layer holding the whole data.
func TestMetacopy(t *testing.T) {
	needRoot(t) // trusted.* xattrs and the kernel mounts
	root := t.TempDir()
	lower, upper, merged := filepath.Join(root, "lower"), filepath.Join(root, "upper"), filepath.Join(root, "merged")
	kwork, kmnt := filepath.Join(root, "kwork"), filepath.Join(root, "kmnt")
	for _, d := range []string{lower + "/d", lower + "/e", upper, merged, kwork, kmnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	big, moved, written := metacopyPattern(64<<20, 0), metacopyPattern(1<<20, 1), metacopyPattern(1<<20, 2)
	for name, data := range map[string][]byte{"d/big": big, "d/moved": moved, "d/written": written} {
		if err := os.WriteFile(filepath.Join(lower, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	mountUnion(t, lower, upper, merged)
	if err := os.Chmod(filepath.Join(merged, "d/big"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(merged, "d/moved"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(merged, "d/moved"), filepath.Join(merged, "e/renamed")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(merged, "d/written"), 0o600); err != nil {
		t.Fatal(err)
	}

	// No data copied: the upper files are placeholders.
	for rel, size := range map[string]int64{"d/big": 64 << 20, "e/renamed": 1 << 20, "d/written": 1 << 20} {
		p := filepath.Join(upper, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != size || !noDataBlocks(t, p) || st.Blocks*512 >= size {
			t.Errorf("upper %s: size %d blocks %d, want %d bytes and no data blocks", rel, st.Size, st.Blocks, size)
		}
		if v, err := getXattr(p, "trusted.overlay.metacopy"); err != nil || v != "" {
			t.Errorf("upper %s: trusted.overlay.metacopy %q, %v; want an empty value", rel, v, err)
		}
	}
	if v, err := getXattr(filepath.Join(upper, "e/renamed"), "trusted.overlay.redirect"); err != nil || v != "/d/moved" {
		t.Errorf("upper e/renamed: redirect %q, %v; want /d/moved", v, err)
	}

	// Reads through the mount are the lower's data, with the new modes.
	wantView := func(t *testing.T, mnt string) {
		t.Helper()
		for rel, want := range map[string]struct {
			data []byte
			mode os.FileMode
		}{"d/big": {big, 0o600}, "e/renamed": {moved, 0o640}} {
			got, err := os.ReadFile(filepath.Join(mnt, rel))
			if err != nil || !bytes.Equal(got, want.data) {
				t.Errorf("%s: read %d bytes, %v; not the lower's data", rel, len(got), err)
			}
			fi, err := os.Stat(filepath.Join(mnt, rel))
			if err != nil || fi.Mode().Perm() != want.mode {
				t.Errorf("%s: stat %v, %v; want mode %o", rel, fi, err, want.mode)
			}
		}
		if _, err := os.Lstat(filepath.Join(mnt, "d/moved")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("d/moved after the rename: %v, want ENOENT", err)
		}
	}
	wantView(t, merged)
	if out, err := run("which", filepath.Join(merged, "d/big")); err != nil || !strings.Contains(out, "metadata in "+upper) || !strings.Contains(out, "data in "+filepath.Join(lower, "d/big")) {
		t.Errorf("which d/big: %q, %v", out, err)
	}

	// The first write copies the data, and only then.
	f, err := os.OpenFile(filepath.Join(merged, "d/written"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("NEW"), 10); err != nil {
		t.Fatal(err)
	}
	f.Close()
	copy(written[10:], "NEW")
	if got, err := os.ReadFile(filepath.Join(merged, "d/written")); err != nil || !bytes.Equal(got, written) {
		t.Errorf("d/written after a write: %d bytes, %v; not the data as written", len(got), err)
	}
	if p := filepath.Join(upper, "d/written"); noDataBlocks(t, p) {
		t.Errorf("upper d/written has no data after a write")
	} else if _, err := getXattr(p, "trusted.overlay.metacopy"); err == nil {
		t.Errorf("upper d/written keeps the metacopy xattr after its data was copied up")
	}
	unmount(t, merged)

	// The kernel, the oracle: without metacopy=on it refuses the
	// placeholders rather than show their zeros.
	lowerOpts := "lowerdir=" + lower + ",upperdir=" + upper + ",workdir=" + kwork
	umountK := kernelMount(t, lowerOpts, kmnt)
	for _, rel := range []string{"d/big", "e/renamed"} {
		data, err := os.ReadFile(filepath.Join(kmnt, rel))
		if !errors.Is(err, unix.EPERM) {
			t.Errorf("kernel overlayfs with default options, %s: %d bytes, %v; want EPERM", rel, len(data), err)
		}
	}
	umountK()
	umountK = kernelMount(t, lowerOpts+",metacopy=on,redirect_dir=on", kmnt)
	wantView(t, kmnt)
	if got, err := os.ReadFile(filepath.Join(kmnt, "d/written")); err != nil || !bytes.Equal(got, written) {
		t.Errorf("kernel: d/written: %d bytes, %v; not the data as written", len(got), err)
	}
	umountK()

	// A commit writes a layer with the whole data.
	mountUnion(t, lower, upper, merged)
	wantView(t, merged)
	commitMount(t, nil, merged, "-m", "metacopy")
	layerDir := filepath.Join(filepath.Dir(upper), ".upper.work", "layers", "1")
	var tarball bytes.Buffer
	if _, err := layer.Write(&tarball, layerDir, []string{lower}, layer.Options{}); err != nil {
		t.Fatalf("layer.Write: %v", err)
	}
	unpacked := filepath.Join(root, "unpacked")
	if _, err := layer.Apply(&tarball, unpacked, layer.ApplyOptions{}); err != nil {
		t.Fatalf("layer.Apply: %v", err)
	}
	for rel, want := range map[string][]byte{"d/big": big, "e/renamed": moved, "d/written": written} {
		got, err := os.ReadFile(filepath.Join(unpacked, rel))
		if err != nil || sha256.Sum256(got) != sha256.Sum256(want) {
			t.Errorf("layer: %s is %d bytes, %v; not the whole data", rel, len(got), err)
		}
	}
	if fi, err := os.Stat(filepath.Join(unpacked, "d/big")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("layer: d/big %v, %v; want mode 0600", fi, err)
	}
	// The merged view after the commit is the same.
	wantView(t, merged)
}
