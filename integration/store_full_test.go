package integration

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// storeTree describes every file of a store: path, type, size and content
// hash, so that a failed command can be shown to have left it as it was.
func storeTree(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		line := fmt.Sprintf("%s %s", rel, fi.Mode().Type())
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %d %x", len(data), sha256.Sum256(data))
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// TestStoreFullDisk: import and load into a store whose disk fills up fail
// with one line naming the problem and leave the store exactly as it was;
// the image already in it still mounts.
func TestStoreFullDisk(t *testing.T) {
	needRoot(t)
	disk := tmpfsDir(t, 8<<20)
	store := filepath.Join(disk, "store")
	root := t.TempDir()
	small := filepath.Join(root, "small.tar")
	rootfsTar(t, small)
	umStore(t, store, "import", small, "small:1")

	// A rootfs with 12 MiB of data that does not compress.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	data := make([]byte, 12<<20)
	r := rand.NewChaCha8([32]byte{7})
	r.Read(data)
	tw.WriteHeader(&tar.Header{Name: "big.bin", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data)), ModTime: time.Unix(1600000000, 0), Format: tar.FormatPAX})
	tw.Write(data)
	tw.Close()
	big := filepath.Join(root, "big.tar")
	if err := os.WriteFile(big, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	// The same as a docker-save archive, made in a roomy second store.
	roomy := filepath.Join(root, "roomy")
	umStore(t, roomy, "import", big, "big:1")
	saved := filepath.Join(root, "big-saved.tar")
	umStore(t, roomy, "save", "big:1", "-o", saved)

	before := storeTree(t, store)
	for _, args := range [][]string{{"import", big, "big:1"}, {"load", "-i", saved}} {
		cmd := exec.Command(binary, args...)
		cmd.Env = append(os.Environ(), "UNIONMOUNT_STORE="+store)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("%s into a full store succeeded:\n%s", args[0], out)
		}
		msg := strings.TrimSpace(string(out))
		if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, "no space left on device") {
			t.Errorf("%s into a full store: %q, want one line naming the full disk", args[0], msg)
		}
		if after := storeTree(t, store); after != before {
			t.Errorf("%s into a full store changed it:\n--- before\n%s\n--- after\n%s", args[0], before, after)
		}
	}
	if out := umStore(t, store, "images"); !strings.Contains(out, "small:1") || strings.Contains(out, "big:1") {
		t.Errorf("images after the failures:\n%s", out)
	}
	mnt := filepath.Join(root, "m")
	os.Mkdir(mnt, 0o755)
	umStore(t, store, "--image", "small:1", "--read-only", mnt)
	t.Cleanup(func() { unmount(t, mnt) })
	if data, err := os.ReadFile(filepath.Join(mnt, "etc/hostname")); err != nil || string(data) != "base\n" {
		t.Errorf("the image already in the store: etc/hostname = %q, %v", data, err)
	}
}
