package integration

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	binenc "encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// This file kills the daemon with SIGKILL in the middle of copy-ups and
// renames, remounts, and checks that every object is either its old self
// or its new self, never something in between, and that the lowers were
// never touched.
//
// The kill points are random. The seed is logged; set
// UNIONMOUNT_CRASH_SEED to replay a run.

// crashSeed returns the seed for this test's kill points.
func crashSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("UNIONMOUNT_CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("UNIONMOUNT_CRASH_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (UNIONMOUNT_CRASH_SEED=%d replays it)", seed, seed)
	return seed
}

// killDaemon kills the foreground daemon cmd with SIGKILL, waits for the
// operations in flight to give up (done is closed when they have), and
// detaches the dead mount lazily.
//
// The kernel aborts the FUSE connection when the daemon's /dev/fuse fd is
// closed, which fails every pending request. But a daemon thread blocked
// on its own mount (go-fuse's poll hack opens MERGED/.go-fuse-epoll-hack
// right after mounting, and a rename in flight holds the root's lock)
// cannot exit, so the fd stays open and both wait forever. A real crash
// recovers the same way as this test: by aborting the connection through
// fusectl.
func killDaemon(t *testing.T, cmd *exec.Cmd, mnt string, done <-chan struct{}) {
	t.Helper()
	abort := fuseAbortFile(t, mnt)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill daemon %d: %v", cmd.Process.Pid, err)
	}
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Logf("operations on %s still blocked 3s after the kill; writing %s", mnt, abort)
		if err := os.WriteFile(abort, []byte("1"), 0); err != nil {
			t.Fatalf("abort FUSE connection: %v", err)
		}
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("operations on the mount did not return after the FUSE connection was aborted")
		}
	}
	if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount -l %s: %v: %s", mnt, err, out)
	}
	for i := 0; isMounted(mnt); i++ {
		if i == 100 {
			t.Fatalf("%s still mounted after umount -l", mnt)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fuseAbortFile returns the fusectl file that aborts the FUSE connection
// mounted on mnt: /sys/fs/fuse/connections/MINOR/abort.
func fuseAbortFile(t *testing.T, mnt string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMountinfo(f[4]) == mnt {
			_, minor, _ := strings.Cut(f[2], ":")
			return filepath.Join("/sys/fs/fuse/connections", minor, "abort")
		}
	}
	t.Fatalf("%s is not in mountinfo", mnt)
	return ""
}

// workLeftovers lists what is in WORK/work, where copy-ups are built.
func workLeftovers(t *testing.T, workdir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(workdir, "work"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// lowerState is everything about a tree that a union must not change: per
// path, the type, mode, owner, size, times (including ctime, which any
// chmod, chown, xattr or data change bumps), xattrs and a content hash.
func lowerState(t *testing.T, root string) map[string]string {
	t.Helper()
	state := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		s := fmt.Sprintf("mode=%o uid=%d gid=%d nlink=%d size=%d mtime=%d.%09d ctime=%d.%09d rdev=%d",
			st.Mode, st.Uid, st.Gid, st.Nlink, st.Size, st.Mtim.Sec, st.Mtim.Nsec,
			st.Ctim.Sec, st.Ctim.Nsec, st.Rdev)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			h, err := hashFile(p)
			if err != nil {
				return err
			}
			s += " sha256=" + h
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			s += " -> " + target
		}
		sz, err := unix.Llistxattr(p, nil)
		if err == nil && sz > 0 {
			buf := make([]byte, sz)
			n, err := unix.Llistxattr(p, buf)
			if err != nil {
				return err
			}
			names := bytes.Split(bytes.TrimRight(buf[:n], "\x00"), []byte{0})
			sort.Slice(names, func(i, j int) bool { return bytes.Compare(names[i], names[j]) < 0 })
			for _, name := range names {
				val := make([]byte, 4096)
				vn, err := unix.Lgetxattr(p, string(name), val)
				if err != nil {
					return err
				}
				s += fmt.Sprintf(" xattr %s=%q", name, val[:vn])
			}
		}
		state[rel] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return state
}

// checkLowersUnchanged compares the lowers with the state taken before.
func checkLowersUnchanged(t *testing.T, before map[string]map[string]string) {
	t.Helper()
	for root, want := range before {
		got := lowerState(t, root)
		for p, w := range want {
			if g, ok := got[p]; !ok {
				t.Errorf("lower %s: %s disappeared", root, p)
			} else if g != w {
				t.Errorf("lower %s: %s changed:\n before %s\n after  %s", root, p, w, g)
			}
		}
		for p := range got {
			if _, ok := want[p]; !ok {
				t.Errorf("lower %s: %s appeared", root, p)
			}
		}
	}
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Copy-up kinds of TestCrashCopyUp, one per file per round.
const (
	crashAppend = iota // O_APPEND write at the end
	crashPatch         // write in the middle, no O_TRUNC
	crashChmod         // metadata only, the data must still come along
	crashKinds
)

var crashKindNames = [crashKinds]string{"append", "patch", "chmod"}

const (
	crashSuffix = "appended by the crash test\n"
	crashPatchD = "patched by the crash test"
)

// bigFile is a large lower file of the copy-up crash test and the hashes of
// the forms it may legitimately have after a crash.
type bigFile struct {
	name   string
	size   int64
	old    string             // sha256 of the lower content
	newSum [crashKinds]string // sha256 after each kind of change
}

func (b *bigFile) patchOff() int64 { return b.size/2 + 123 }

// writeBigFile writes a file of size bytes whose every MiB is distinct (a
// random block stamped with the file id and the MiB index), and computes
// the hashes of its old and changed forms on the way.
func writeBigFile(t *testing.T, dir string, id int, size int64) *bigFile {
	t.Helper()
	b := &bigFile{name: fmt.Sprintf("big%d", id), size: size}
	f, err := os.Create(filepath.Join(dir, b.name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 1<<20)
	r := rand.New(rand.NewPCG(uint64(id), 42))
	for i := 0; i < len(block); i += 8 {
		binenc.LittleEndian.PutUint64(block[i:], r.Uint64())
	}
	hOld, hApp, hPatch := sha256.New(), sha256.New(), sha256.New()
	w := bufio.NewWriterSize(f, 1<<20)
	patch := []byte(crashPatchD)
	for off := int64(0); off < size; off += int64(len(block)) {
		binenc.LittleEndian.PutUint64(block[0:], uint64(id))
		binenc.LittleEndian.PutUint64(block[8:], uint64(off))
		chunk := block[:min(int64(len(block)), size-off)]
		w.Write(chunk)
		hOld.Write(chunk)
		hApp.Write(chunk)
		po := b.patchOff()
		if po >= off && po < off+int64(len(chunk)) {
			p := bytes.Clone(chunk)
			copy(p[po-off:], patch)
			hPatch.Write(p)
		} else {
			hPatch.Write(chunk)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	hApp.Write([]byte(crashSuffix))
	sum := func(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }
	b.old = sum(hOld)
	b.newSum[crashAppend] = sum(hApp)
	b.newSum[crashPatch] = sum(hPatch)
	b.newSum[crashChmod] = b.old
	return b
}

// crashOp changes the big file at p the way kind says; it returns the
// first error, as expected once the daemon is dead.
func crashOp(p string, b *bigFile, kind int) error {
	switch kind {
	case crashAppend:
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString(crashSuffix)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	case crashPatch:
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteAt([]byte(crashPatchD), b.patchOff())
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	default:
		return os.Chmod(p, 0o600)
	}
}

// TestCrashCopyUp kills the daemon while it copies up three large lower
// files (triggered by an append, a write in the middle and a chmod) and
// checks after a remount that each file is whole: the lower original, or
// the original with the change, never a partial copy.
func TestCrashCopyUp(t *testing.T) {
	needRoot(t)
	needFUSE(t)
	seed := crashSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))

	root := t.TempDir()
	lower := filepath.Join(root, "lower")
	mnt := filepath.Join(root, "merged")
	for _, d := range []string{lower, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sizes := []int64{64 << 20, 96<<20 + 4321, 128 << 20}
	var bigs []*bigFile
	for i, size := range sizes {
		bigs = append(bigs, writeBigFile(t, lower, i, size))
	}
	before := map[string]map[string]string{lower: lowerState(t, lower)}

	const rounds = 8
	var outcomes [crashKinds][2]int // [kind][0 old, 1 new]
	for r := 0; r < rounds; r++ {
		upper := filepath.Join(root, fmt.Sprintf("upper%d", r))
		workdir := filepath.Join(root, fmt.Sprintf(".upper%d.work", r))
		if err := os.Mkdir(upper, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := startForeground(t, lower, upper, mnt)

		kinds := make([]int, len(bigs))
		var wg sync.WaitGroup
		for i, b := range bigs {
			kinds[i] = (r + i) % crashKinds
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = crashOp(filepath.Join(mnt, b.name), b, kinds[i]) // fails once killed
			}()
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		delay := time.Duration(rng.Int64N(int64(700 * time.Millisecond)))
		time.Sleep(delay)
		killDaemon(t, cmd, mnt, done)
		left := workLeftovers(t, workdir)

		startForeground(t, lower, upper, mnt)
		var states []string
		for i, b := range bigs {
			state := checkBigFile(t, mnt, upper, b, kinds[i])
			switch state {
			case "old":
				outcomes[kinds[i]][0]++
			case "new":
				outcomes[kinds[i]][1]++
			}
			states = append(states, b.name+" "+crashKindNames[kinds[i]]+" "+state)
		}
		t.Logf("round %d: killed after %v, %d work leftovers: %v", r, delay.Round(time.Millisecond), len(left), states)
		checkNames(t, mnt, []string{"big0", "big1", "big2"})
		if l := workLeftovers(t, workdir); len(l) > 0 {
			t.Errorf("round %d: remount left %v in %s/work", r, l, workdir)
		}
		unmount(t, mnt)
	}
	for k := range crashKinds {
		t.Logf("%s: %d old, %d new", crashKindNames[k], outcomes[k][0], outcomes[k][1])
	}
	checkLowersUnchanged(t, before)
}

// checkBigFile checks that b, seen through the mount and in the upper, is
// either the lower original or the original changed by kind, and returns
// which ("old" or "new"; "" after an error).
func checkBigFile(t *testing.T, mnt, upper string, b *bigFile, kind int) string {
	t.Helper()
	p := filepath.Join(mnt, b.name)
	st, err := os.Stat(p)
	if err != nil {
		t.Errorf("%s: %v", b.name, err)
		return ""
	}
	sum, err := hashFile(p)
	if err != nil {
		t.Errorf("%s: %v", b.name, err)
		return ""
	}
	state := ""
	switch {
	case sum == b.newSum[kind] && kind != crashChmod:
		state = "new"
	case sum == b.old:
		state = "old"
	default:
		t.Errorf("%s (%s): size %d, content is neither the original (size %d) nor the changed file",
			b.name, crashKindNames[kind], st.Size(), b.size)
		return ""
	}
	mode := st.Mode().Perm()
	switch {
	case kind == crashChmod && mode == 0o600:
		state = "new"
	case mode != 0o644:
		t.Errorf("%s (%s): mode %o", b.name, crashKindNames[kind], mode)
	}
	if ust, err := os.Lstat(filepath.Join(upper, b.name)); err == nil {
		if !ust.Mode().IsRegular() || ust.Size() != st.Size() || ust.Mode().Perm() != mode {
			t.Errorf("%s: upper copy is %v size %d, merged view %v size %d",
				b.name, ust.Mode(), ust.Size(), st.Mode(), st.Size())
		}
	} else if state == "new" {
		t.Errorf("%s: changed but not in the upper: %v", b.name, err)
	}
	return state
}

// checkNames checks that the directory dir lists exactly names.
func checkNames(t *testing.T, dir string, names []string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Error(err)
		return
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	want := append([]string(nil), names...)
	sort.Strings(want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s lists %q, want %q", dir, got, want)
	}
}

// treeSums maps each path below root to its type, mode and, for regular
// files, content hash.
func treeSums(t *testing.T, root string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		s := info.Mode().String()
		if info.Mode().IsRegular() {
			h, err := hashFile(p)
			if err != nil {
				return err
			}
			s += " " + h
		}
		sums[rel] = s
		return nil
	})
	if err != nil {
		t.Errorf("walk %s: %v", root, err)
	}
	return sums
}

// TestCrashRename kills the daemon while files of a lower directory are
// renamed back and forth (each rename of a lower file copies it up and
// leaves a whiteout) and while a lower directory tree is renamed back and
// forth (which copies up its whole subtree). After a remount every file
// must exist under exactly one of its two names with its content, and the
// tree under exactly one of its names, complete.
func TestCrashRename(t *testing.T) {
	needRoot(t)
	needFUSE(t)
	seed := crashSeed(t)
	rng := rand.New(rand.NewPCG(seed, 2))

	root := t.TempDir()
	lower := filepath.Join(root, "lower")
	mnt := filepath.Join(root, "merged")
	for _, d := range []string{lower, mnt, filepath.Join(lower, "files")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	const nfiles = 40
	for i := range nfiles {
		data := bytes.Repeat([]byte(fmt.Sprintf("file %d\n", i)), 1000+i*97)
		if err := os.WriteFile(filepath.Join(lower, "files", fmt.Sprintf("f%02d", i)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tree := filepath.Join(lower, "tree")
	for i := range 6 {
		for j := range 5 {
			d := filepath.Join(tree, fmt.Sprintf("d%d", i), fmt.Sprintf("e%d", j))
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			for k := range 8 {
				data := bytes.Repeat([]byte(fmt.Sprintf("%d/%d/%d\n", i, j, k)), 500+k*300)
				if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%d", k)), data, 0o640); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	big := bytes.Repeat([]byte("a big file in the renamed tree\n"), 1<<20)
	if err := os.WriteFile(filepath.Join(tree, "d0", "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("d0/big", filepath.Join(tree, "link")); err != nil {
		t.Fatal(err)
	}
	fileSums := treeSums(t, filepath.Join(lower, "files"))
	wantTree := treeSums(t, tree)
	before := map[string]map[string]string{lower: lowerState(t, lower)}

	const rounds = 8
	for r := 0; r < rounds; r++ {
		upper := filepath.Join(root, fmt.Sprintf("upper%d", r))
		workdir := filepath.Join(root, fmt.Sprintf(".upper%d.work", r))
		if err := os.Mkdir(upper, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := startForeground(t, lower, upper, mnt)

		var fileRenames, treeRenames int
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for pass := 0; ; pass++ {
				from, to := "f", "g"
				if pass%2 == 1 {
					from, to = to, from
				}
				for i := range nfiles {
					dir := filepath.Join(mnt, "files")
					if os.Rename(filepath.Join(dir, fmt.Sprintf("%s%02d", from, i)),
						filepath.Join(dir, fmt.Sprintf("%s%02d", to, i))) != nil {
						return // the daemon is dead
					}
					fileRenames++
				}
			}
		}()
		go func() {
			defer wg.Done()
			for pass := 0; ; pass++ {
				from, to := "tree", "tree2"
				if pass%2 == 1 {
					from, to = to, from
				}
				if os.Rename(filepath.Join(mnt, from), filepath.Join(mnt, to)) != nil {
					return
				}
				treeRenames++
			}
		}()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		delay := time.Duration(rng.Int64N(int64(600 * time.Millisecond)))
		time.Sleep(delay)
		killDaemon(t, cmd, mnt, done)
		left := workLeftovers(t, workdir)

		startForeground(t, lower, upper, mnt)
		t.Logf("round %d: killed after %v (%d file renames, %d tree renames done), %d work leftovers",
			r, delay.Round(time.Millisecond), fileRenames, treeRenames, len(left))

		gotFiles := treeSums(t, filepath.Join(mnt, "files"))
		for i := range nfiles {
			f, g := fmt.Sprintf("f%02d", i), fmt.Sprintf("g%02d", i)
			fsum, fok := gotFiles[f]
			gsum, gok := gotFiles[g]
			switch {
			case fok && gok:
				t.Errorf("round %d: files/%s and files/%s both exist", r, f, g)
			case !fok && !gok:
				t.Errorf("round %d: files/%s and files/%s are both gone", r, f, g)
			case fok && fsum != fileSums[f]:
				t.Errorf("round %d: files/%s is %s, want %s", r, f, fsum, fileSums[f])
			case gok && gsum != fileSums[f]:
				t.Errorf("round %d: files/%s (renamed %s) is %s, want %s", r, g, f, gsum, fileSums[f])
			}
			delete(gotFiles, f)
			delete(gotFiles, g)
		}
		for name := range gotFiles {
			t.Errorf("round %d: unexpected files/%s", r, name)
		}

		ents, err := os.ReadDir(mnt)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		switch fmt.Sprint(names) {
		case "[files tree]", "[files tree2]":
			dir := names[1]
			got := treeSums(t, filepath.Join(mnt, dir))
			for p, w := range wantTree {
				if g, ok := got[p]; !ok {
					t.Errorf("round %d: %s/%s is missing", r, dir, p)
				} else if g != w {
					t.Errorf("round %d: %s/%s is %s, want %s", r, dir, p, g, w)
				}
			}
			for p := range got {
				if _, ok := wantTree[p]; !ok {
					t.Errorf("round %d: unexpected %s/%s", r, dir, p)
				}
			}
		default:
			t.Errorf("round %d: merged root lists %q, want files and one of tree, tree2", r, names)
		}
		if l := workLeftovers(t, workdir); len(l) > 0 {
			t.Errorf("round %d: remount left %v in %s/work", r, l, workdir)
		}
		unmount(t, mnt)
		if t.Failed() {
			break
		}
	}
	checkLowersUnchanged(t, before)
}
