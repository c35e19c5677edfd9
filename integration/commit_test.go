package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The commit tests run `unionmount commit`, `diff`, `layers` and `which`
// for real against live mounts and unmounted uppers, and check through the
// mount point that a commit changes nothing anyone can see except the
// layer stack: the merged tree, inode numbers and times included, stays as
// it was, and files held open keep working without ever changing a
// committed layer.

// labChanges makes a change of every kind through the mount point m of a
// lab: a new file, a modified lower file (copy-up), a chmod, a deleted
// lower file (whiteout), a lower directory removed and made again
// (opaque), a renamed lower directory, hard links, a symlink and an xattr.
// The same calls work on a kernel overlay mount (mv copies the directory
// when the kernel refuses to rename it).
func labChanges(t testing.TB, m string) {
	t.Helper()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must("create", os.WriteFile(filepath.Join(m, "notes.txt"), []byte("lab notes\n"), 0o644))
	f, err := os.OpenFile(filepath.Join(m, "etc", "hostname"), os.O_WRONLY|os.O_APPEND, 0)
	must("open a lower file for appending", err)
	_, err = f.WriteString("changed\n")
	must("append", err)
	must("close", f.Close())
	must("chmod", os.Chmod(filepath.Join(m, "app", "config.json"), 0o600))
	must("delete a lower file", os.Remove(filepath.Join(m, "etc", "motd")))
	must("rm -rf a lower dir", os.RemoveAll(filepath.Join(m, "app", "data")))
	must("mkdir it again", os.Mkdir(filepath.Join(m, "app", "data"), 0o755))
	must("create in it", os.WriteFile(filepath.Join(m, "app", "data", "fresh.txt"), []byte("fresh\n"), 0o644))
	if out, err := exec.Command("mv", filepath.Join(m, "docs"), filepath.Join(m, "manual")).CombinedOutput(); err != nil {
		t.Fatalf("mv docs manual: %v: %s", err, out)
	}
	must("hard link a new file", os.Link(filepath.Join(m, "notes.txt"), filepath.Join(m, "notes.link")))
	must("hard link a copied-up file", os.Link(filepath.Join(m, "app", "config.json"), filepath.Join(m, "app", "config.hard")))
	must("symlink", os.Symlink("etc/hostname", filepath.Join(m, "host")))
	must("setxattr", unix.Lsetxattr(filepath.Join(m, "app", "plugin.txt"), "user.lab", []byte("yes"), 0))
}

// labDiff is `unionmount diff` after labChanges.
const labDiff = `C /app
A /app/config.hard
C /app/config.json
C /app/data
A /app/data/fresh.txt
D /app/data/log.txt
D /app/data/numbers.txt
C /app/plugin.txt
D /docs
C /etc
C /etc/hostname
D /etc/motd
A /host
A /manual
A /manual/README
A /notes.link
A /notes.txt
`

// checkDiff runs `unionmount diff ARGS...` and compares its output.
func checkDiff(t *testing.T, want string, args ...string) {
	t.Helper()
	out, errOut, err := um(nil, append([]string{"diff"}, args...)...)
	if err != nil {
		t.Fatalf("unionmount diff %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	if out != want {
		t.Errorf("unionmount diff %s:\n%s\nwant:\n%s", strings.Join(args, " "), out, want)
	}
}

// checkWhich runs `unionmount which` on merged paths and compares each
// output line.
func checkWhich(t *testing.T, merged string, want map[string]string) {
	t.Helper()
	for rel, w := range want {
		p := filepath.Join(merged, rel)
		out, errOut, err := um(nil, "which", p)
		if err != nil {
			t.Errorf("unionmount which %s: %v\n%s%s", p, err, out, errOut)
			continue
		}
		if want := p + ": " + w + "\n"; out != want {
			t.Errorf("unionmount which %s:\n got  %q\n want %q", p, out, want)
		}
	}
}

// TestLabCommit is the teaching lab end to end: changes of every kind
// through the mount, diff, a live commit while files are held open, the
// layer stack as layers and which show it, writes through a handle opened
// before the commit, a second commit, and a remount.
//
// Passthrough is off here, as for a mount without root: a file open at a
// commit is then frozen with the layer, and its next write copies it up
// again. TestPassthroughCommit has the other case.
func TestLabCommit(t *testing.T) {
	needFUSE(t)
	l := newLab(t)
	mountUnion(t, "-o", "passthrough=off", l.lowers(), l.upper, l.merged)
	m := l.merged
	labChanges(t, m)
	checkDiff(t, labDiff, m)

	// Held across the commit: one file open for writing, one for reading.
	w, err := os.OpenFile(filepath.Join(m, "etc", "hostname"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r, err := os.Open(filepath.Join(m, "notes.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	before := fullListing(t, m)
	id, errOut := commitMount(t, nil, m, "-m", "teaching lab")
	layer1 := filepath.Join(l.work, "layers", "1")
	if !strings.Contains(errOut, layer1) {
		t.Errorf("commit stderr does not name the layer %s: %q", layer1, errOut)
	}
	t.Logf("commit: %s %s", id, strings.TrimSpace(errOut))
	checkListing(t, "merged view after the commit (want: as before it)", fullListing(t, m), before)

	if names := dirNames(t, l.upper); len(names) > 0 {
		t.Errorf("upper after the commit holds %v, want it empty", names)
	}
	// The layer holds the changes, in the overlay format.
	if data, err := os.ReadFile(filepath.Join(layer1, "notes.txt")); err != nil || string(data) != "lab notes\n" {
		t.Errorf("layer 1 notes.txt: %q, %v", data, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(layer1, "etc", "motd"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("layer 1 etc/motd is not a whiteout: mode %o rdev %d, %v", st.Mode, st.Rdev, err)
	}
	if v, err := getXattr(filepath.Join(layer1, "app", "data"), "trusted.overlay.opaque"); err != nil || v != "y" {
		t.Errorf("layer 1 app/data is not opaque: %q, %v", v, err)
	}
	if _, err := os.Stat(layer1 + ".json"); err != nil {
		t.Errorf("layer 1 has no metadata: %v", err)
	}

	rows := layersTable(t, m)
	if len(rows) != 4 {
		t.Fatalf("layers lists %d layers, want 4: %q", len(rows), rows)
	}
	layerRow(t, rows[0], "upper", "-", "-", l.upper)
	layerRow(t, rows[1], "committed", shortOf(id), "teaching lab", layer1)
	layerRow(t, rows[2], "lower", "-", "-", l.base)
	layerRow(t, rows[3], "lower", "-", "-", l.extra)

	checkWhich(t, m, map[string]string{
		"notes.txt":        layer1,
		"etc/issue":        l.base,
		"app/plugin.txt":   layer1,
		"etc/motd":         fmt.Sprintf("hidden by the whiteout etc/motd in %s (it is in %s)", layer1, l.base),
		"app/data/log.txt": fmt.Sprintf("hidden by the opaque directory app/data in %s (it is in %s)", layer1, l.base),
		"docs/README":      fmt.Sprintf("hidden by the whiteout docs in %s (it is in %s)", layer1, l.base),
	})

	// A write through the handle opened before the commit copies the
	// file up again: the merged view changes, the layer does not.
	frozen := layerState(t, layer1)
	if _, err := w.WriteString("after commit\n"); err != nil {
		t.Fatalf("write through a handle opened before the commit: %v", err)
	}
	baseHost, err := os.ReadFile(filepath.Join(l.base, "etc", "hostname"))
	if err != nil {
		t.Fatal(err)
	}
	wantHost := string(baseHost) + "changed\nafter commit\n"
	if data, err := os.ReadFile(filepath.Join(m, "etc", "hostname")); err != nil || string(data) != wantHost {
		t.Errorf("merged etc/hostname after the write: %q, %v; want %q", data, err, wantHost)
	}
	if data, err := os.ReadFile(filepath.Join(l.upper, "etc", "hostname")); err != nil || string(data) != wantHost {
		t.Errorf("upper etc/hostname after the write: %q, %v; want %q", data, err, wantHost)
	}
	if after := layerState(t, layer1); after != frozen {
		t.Errorf("the write through an old handle changed committed layer 1: %s", firstDiffLine(frozen, after))
	}
	buf := make([]byte, 100)
	if n, err := r.ReadAt(buf, 0); string(buf[:n]) != "lab notes\n" {
		t.Errorf("read through a handle opened before the commit: %q, %v", buf[:n], err)
	}
	checkDiff(t, "C /etc\nC /etc/hostname\n", m)

	// A second commit goes on top of the first.
	before2 := fullListing(t, m)
	id2, _ := commitMount(t, nil, m, "-m", "second")
	layer2 := filepath.Join(l.work, "layers", "2")
	checkListing(t, "merged view after the second commit", fullListing(t, m), before2)
	if data, err := os.ReadFile(filepath.Join(layer2, "etc", "hostname")); err != nil || string(data) != wantHost {
		t.Errorf("layer 2 etc/hostname: %q, %v; want %q", data, err, wantHost)
	}
	rows = layersTable(t, m)
	if len(rows) != 5 {
		t.Fatalf("layers lists %d layers, want 5: %q", len(rows), rows)
	}
	layerRow(t, rows[0], "upper", "-", "-", l.upper)
	layerRow(t, rows[1], "committed", shortOf(id2), "second", layer2)
	layerRow(t, rows[2], "committed", shortOf(id), "teaching lab", layer1)
	layerRow(t, rows[3], "lower", "-", "-", l.base)
	layerRow(t, rows[4], "lower", "-", "-", l.extra)
	checkDiff(t, "", m)
	frozen2 := layerState(t, layer2)
	if _, err := w.WriteString("after the second\n"); err != nil {
		t.Fatalf("write after the second commit: %v", err)
	}
	wantHost += "after the second\n"
	if data, err := os.ReadFile(filepath.Join(m, "etc", "hostname")); err != nil || string(data) != wantHost {
		t.Errorf("merged etc/hostname: %q, %v; want %q", data, err, wantHost)
	}
	if after := layerState(t, layer2); after != frozen2 {
		t.Errorf("a write after the second commit changed layer 2: %s", firstDiffLine(frozen2, after))
	}
	if after := layerState(t, layer1); after != frozen {
		t.Errorf("layer 1 changed: %s", firstDiffLine(frozen, after))
	}
	w.Close()
	r.Close()

	// A remount with the same arguments stacks the committed layers again.
	final := fullListing(t, m)
	unmount(t, m)
	waitNoDaemon(t, m)
	mountUnion(t, l.lowers(), l.upper, l.merged)
	checkListing(t, "merged view after a remount", fullListing(t, m), final)
	if rows := layersTable(t, m); len(rows) != 5 {
		t.Errorf("after a remount, layers lists %d layers, want 5: %q", len(rows), rows)
	}
}

// TestCommitIsRename commits an upper of 20k small files and checks that
// each file in the new layer is the very inode that was in the upper: the
// commit renames, it does not copy. (On a tmpfs, which needs root: on this
// disk, creating and removing the files alone takes ten seconds.)
func TestCommitIsRename(t *testing.T) {
	needFUSE(t)
	l := newLabIn(t, tmpfsDir(t, 256<<20))
	const n = 20000
	type devIno struct{ dev, ino uint64 }
	want := map[string]devIno{}
	for d := range 100 {
		dir := filepath.Join(l.upper, "many", fmt.Sprintf("d%02d", d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := range n / 100 {
			p := filepath.Join(dir, fmt.Sprintf("f%03d", f))
			if err := os.WriteFile(p, []byte(p), 0o644); err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				t.Fatal(err)
			}
			rel, _ := filepath.Rel(l.upper, p)
			want[rel] = devIno{st.Dev, st.Ino}
		}
	}
	mountUnion(t, l.lowers(), l.upper, l.merged)
	if ents, err := os.ReadDir(filepath.Join(l.merged, "many", "d42")); err != nil || len(ents) != n/100 {
		t.Fatalf("merged many/d42 lists %d entries, %v; want %d", len(ents), err, n/100)
	}
	_, errOut := commitMount(t, nil, l.merged)
	if m := heldRE.FindStringSubmatch(errOut); m != nil {
		t.Logf("commit of %d files: writers held %s", n, m[1])
	}
	layer1 := filepath.Join(l.work, "layers", "1")
	moved := 0
	for rel, w := range want {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(layer1, rel), &st); err != nil {
			t.Errorf("%s is not in the layer: %v", rel, err)
			continue
		}
		if (devIno{st.Dev, st.Ino}) != w {
			moved++
			if moved <= 5 {
				t.Errorf("%s: in the layer dev %d ino %d, in the upper it was dev %d ino %d (copied, not renamed)",
					rel, st.Dev, st.Ino, w.dev, w.ino)
			}
		}
	}
	if moved > 0 {
		t.Errorf("%d of %d files were copied into the layer, not renamed", moved, n)
	}
	if names := dirNames(t, l.upper); len(names) > 0 {
		t.Errorf("upper after the commit holds %v", names)
	}
	if ents, err := os.ReadDir(filepath.Join(l.merged, "many", "d42")); err != nil || len(ents) != n/100 {
		t.Errorf("after the commit, merged many/d42 lists %d entries, %v; want %d", len(ents), err, n/100)
	}
}

// errorLine checks that a failed command printed one line on stderr and
// nothing on stdout, and exited non-zero.
func errorLine(t *testing.T, what, stdout, stderr string, err error) {
	t.Helper()
	if cliExitCode(err) == 0 {
		t.Errorf("%s succeeded, want an error; stdout %q stderr %q", what, stdout, stderr)
		return
	}
	if stdout != "" {
		t.Errorf("%s: printed %q on stdout", what, stdout)
	}
	if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
		t.Errorf("%s: stderr is not one line: %q", what, stderr)
	}
	t.Logf("%s: %s", what, strings.TrimSpace(stderr))
}

// TestCommitErrors checks that commit and which refuse what they cannot
// do with one line on stderr and a non-zero exit, writing nothing.
func TestCommitErrors(t *testing.T) {
	t.Run("not a mount", func(t *testing.T) {
		l := newLab(t)
		if err := os.WriteFile(filepath.Join(l.merged, "f"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		before := treeState(t, l.root)
		out, errOut, err := um(nil, "commit", l.merged, "-m", "no")
		errorLine(t, "commit of a plain directory", out, errOut, err)
		out, errOut, err = um(nil, "commit", l.merged)
		errorLine(t, "commit of a plain directory", out, errOut, err)
		if d := treeChanges(before, treeState(t, l.root)); len(d) > 0 {
			t.Errorf("a failed commit wrote: %v", d)
		}
	})
	t.Run("another filesystem", func(t *testing.T) {
		// The mount point of a filesystem that is not unionmount.
		out, errOut, err := um(nil, "commit", "/proc")
		errorLine(t, "commit of /proc", out, errOut, err)
	})
	t.Run("read-only mount", func(t *testing.T) {
		needFUSE(t)
		l := newLab(t)
		mountUnion(t, l.lowers(), l.merged)
		before := treeState(t, l.root)
		out, errOut, err := um(nil, "commit", l.merged)
		errorLine(t, "commit of a read-only mount", out, errOut, err)
		if d := treeChanges(before, treeState(t, l.root)); len(d) > 0 {
			t.Errorf("a failed commit wrote: %v", d)
		}
		out, errOut, err = um(nil, "diff", l.merged)
		errorLine(t, "diff of a read-only mount", out, errOut, err)
	})
	t.Run("read-only mount with an upper", func(t *testing.T) {
		needFUSE(t)
		l := newLab(t)
		if err := os.WriteFile(filepath.Join(l.upper, "u"), []byte("upper\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		mountUnion(t, "--read-only", l.lowers(), l.upper, l.merged)
		before := treeState(t, l.root)
		out, errOut, err := um(nil, "commit", l.merged)
		errorLine(t, "commit of a --read-only mount", out, errOut, err)
		if d := treeChanges(before, treeState(t, l.root)); len(d) > 0 {
			t.Errorf("a failed commit wrote: %v", d)
		}
	})
	t.Run("missing upper", func(t *testing.T) {
		l := newLab(t)
		before := treeState(t, l.root)
		missing := filepath.Join(l.root, "nosuchupper")
		out, errOut, err := um(nil, "commit", l.lowers(), missing)
		errorLine(t, "offline commit of a missing upper", out, errOut, err)
		out, errOut, err = um(nil, "commit", l.lowers(), missing, "-w", filepath.Join(l.root, "w"))
		errorLine(t, "offline commit of a missing upper with -w", out, errOut, err)
		out, errOut, err = um(nil, "commit", l.base+":"+filepath.Join(l.root, "nosuchlower"), l.upper)
		errorLine(t, "offline commit over a missing lower", out, errOut, err)
		if d := treeChanges(before, treeState(t, l.root)); len(d) > 0 {
			t.Errorf("a failed commit wrote: %v", d)
		}
	})
	t.Run("which outside a mount", func(t *testing.T) {
		l := newLab(t)
		out, errOut, err := um(nil, "which", filepath.Join(l.base, "etc", "issue"))
		errorLine(t, "which of a path outside any mount", out, errOut, err)
		out, errOut, err = um(nil, "which", filepath.Join(l.root, "no", "such", "path"))
		errorLine(t, "which of a missing path outside any mount", out, errOut, err)
		out, errOut, err = um(nil, "layers", l.merged)
		errorLine(t, "layers of a plain directory", out, errOut, err)
	})
	t.Run("which of a path no layer has", func(t *testing.T) {
		needFUSE(t)
		l := newLab(t)
		mountUnion(t, l.lowers(), l.upper, l.merged)
		out, errOut, err := um(nil, "which", filepath.Join(l.merged, "nosuchfile"))
		errorLine(t, "which of a path no layer has", out, errOut, err)
	})
}

// TestCommitConcurrent commits 20 times while writers keep creating,
// appending to (through handles held open across every commit and through
// fresh ones) and renaming files through the mount. No writer may see an
// error, every write must be in the merged view exactly once, before and
// after a remount, and no committed layer may change after its commit.
func TestCommitConcurrent(t *testing.T) {
	needFUSE(t)
	l := newLabIn(t, tmpfsDir(t, 256<<20))
	mountUnion(t, l.lowers(), l.upper, l.merged)
	m := l.merged

	const writers, commits = 4, 20
	type writer struct {
		n    int // files created
		errs []error
		want map[string]string // file name -> content
		log  strings.Builder   // what the held handle appended
	}
	ws := make([]*writer, writers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range ws {
		w := &writer{want: map[string]string{}}
		ws[i] = w
		dir := filepath.Join(m, fmt.Sprintf("w%d", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		logf, err := os.OpenFile(filepath.Join(dir, "log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer logf.Close()
			fail := func(err error) bool {
				if err != nil {
					w.errs = append(w.errs, err)
				}
				return err != nil
			}
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond): // a few thousand files in all
				}
				name := fmt.Sprintf("f%04d", k)
				data := fmt.Sprintf("writer %d file %d\n", i, k)
				if fail(os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644)) {
					return
				}
				w.want[name] = data
				w.n++
				line := fmt.Sprintf("%d\n", k)
				if _, err := logf.WriteString(line); fail(err) {
					return
				}
				w.log.WriteString(line)
				if k%3 == 1 {
					// Rename an older file, by now likely in a committed layer.
					old := fmt.Sprintf("f%04d", k-1)
					nw := fmt.Sprintf("g%04d", k-1)
					if fail(os.Rename(filepath.Join(dir, old), filepath.Join(dir, nw))) {
						return
					}
					w.want[nw] = w.want[old]
					delete(w.want, old)
				}
				if k >= 5 && k%5 == 0 {
					// Append through a fresh handle to a file created earlier.
					name := fmt.Sprintf("f%04d", k-5)
					if _, ok := w.want[name]; !ok {
						name = fmt.Sprintf("g%04d", k-5)
					}
					f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND, 0)
					if fail(err) {
						return
					}
					_, err = f.WriteString("appended\n")
					if cerr := f.Close(); err == nil {
						err = cerr
					}
					if fail(err) {
						return
					}
					w.want[name] += "appended\n"
				}
			}
		}()
	}

	states := make([]string, commits)
	for c := range commits {
		time.Sleep(20 * time.Millisecond)
		out, errOut, err := um(nil, "commit", m)
		if err != nil || !idRE.MatchString(out) {
			t.Errorf("commit %d: %v\n%s%s", c+1, err, out, errOut)
			break
		}
		states[c] = layerState(t, filepath.Join(l.work, "layers", strconv.Itoa(c+1)))
	}
	close(stop)
	wg.Wait()

	check := func(when string) {
		t.Helper()
		for i, w := range ws {
			dir := filepath.Join(m, fmt.Sprintf("w%d", i))
			for _, e := range w.errs {
				t.Errorf("writer %d: %v", i, e)
			}
			want := map[string]string{"log": w.log.String()}
			for k, v := range w.want {
				want[k] = v
			}
			got := map[string]string{}
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				data, err := os.ReadFile(filepath.Join(dir, e.Name()))
				if err != nil {
					t.Errorf("%s: %v", e.Name(), err)
				}
				got[e.Name()] = string(data)
			}
			bad := 0
			for name, w := range want {
				if g, ok := got[name]; !ok {
					t.Errorf("%s: w%d/%s is missing", when, i, name)
					bad++
				} else if g != w {
					t.Errorf("%s: w%d/%s is %q, want %q", when, i, name, g, w)
					bad++
				}
				if bad > 10 {
					t.Fatalf("too many errors")
				}
			}
			for name := range got {
				if _, ok := want[name]; !ok {
					t.Errorf("%s: w%d/%s should not exist", when, i, name)
				}
			}
		}
	}
	total := 0
	for _, w := range ws {
		total += w.n
	}
	t.Logf("%d commits while %d writers created %d files", commits, writers, total)
	check("after the commits")
	for c, s := range states {
		if s == "" {
			continue
		}
		if now := layerState(t, filepath.Join(l.work, "layers", strconv.Itoa(c+1))); now != s {
			t.Errorf("committed layer %d changed after its commit: %s", c+1, firstDiffLine(s, now))
		}
	}
	unmount(t, m)
	mountUnion(t, l.lowers(), l.upper, l.merged)
	check("after a remount")
	if rows := layersTable(t, m); len(rows) != commits+3 {
		t.Errorf("layers lists %d layers, want %d", len(rows), commits+3)
	}
}

// emptyLayerID is the diff_id of the empty layer tar (1024 zero bytes).
const emptyLayerID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"

// TestCommitReproducible checks that the same changes committed in two
// labs, with SOURCE_DATE_EPOCH set, get the same id, and that an empty
// upper commits as the empty layer.
func TestCommitReproducible(t *testing.T) {
	needFUSE(t)
	epoch := []string{"SOURCE_DATE_EPOCH=1600000000"}
	var ids []string
	for i := range 3 {
		if i == 2 {
			time.Sleep(1100 * time.Millisecond) // other mtimes than the first two labs'
		}
		l := newLab(t)
		mountUnion(t, l.lowers(), l.upper, l.merged)
		labChanges(t, l.merged)
		env := epoch
		if i == 2 {
			env = []string{"SOURCE_DATE_EPOCH="}
		}
		id, _ := commitMount(t, env, l.merged, "-m", fmt.Sprintf("lab %d", i))
		ids = append(ids, id)
		if i == 0 {
			// Nothing changed since: the empty layer.
			if id, _ := commitMount(t, env, l.merged); id != emptyLayerID {
				t.Errorf("commit of an empty upper: %s, want %s", id, emptyLayerID)
			}
		}
	}
	if ids[0] != ids[1] {
		t.Errorf("the same changes with SOURCE_DATE_EPOCH got two ids: %s and %s", ids[0], ids[1])
	}
	t.Logf("with SOURCE_DATE_EPOCH: %s; without: %s", ids[0], ids[2])

	// The empty layer, live and offline.
	l := newLab(t)
	mountUnion(t, l.lowers(), l.upper, l.merged)
	if id, _ := commitMount(t, nil, l.merged); id != emptyLayerID {
		t.Errorf("live commit of a fresh empty upper: %s, want %s", id, emptyLayerID)
	}
	l2 := newLab(t)
	if id, _ := commitMount(t, nil, l2.lowers(), l2.upper); id != emptyLayerID {
		t.Errorf("offline commit of an empty upper: %s, want %s", id, emptyLayerID)
	}
}

// TestCommitForeignUpper makes the lab's changes on a kernel overlayfs
// mount (and on fuse-overlayfs, when installed), unmounts it, commits the
// upper it left offline, and checks that a unionmount mount of the same
// lowers, upper and workdir shows what the writer showed, as does a
// read-only kernel mount of the committed layer over the lowers.
func TestCommitForeignUpper(t *testing.T) {
	needRoot(t)
	needFUSE(t)
	// The id of the same changes made through unionmount: with
	// SOURCE_DATE_EPOCH every writer's upper must give the same layer.
	epoch := []string{"SOURCE_DATE_EPOCH=1600000000"}
	ul := newLab(t)
	mountUnion(t, ul.lowers(), ul.upper, ul.merged)
	labChanges(t, ul.merged)
	unionID, _ := commitMount(t, epoch, ul.merged)
	for _, writer := range []string{"kernel", "fuse-overlayfs"} {
		t.Run(writer, func(t *testing.T) {
			needFUSE(t)
			l := newLab(t)
			kwork := filepath.Join(l.root, "kwork")
			wmnt := filepath.Join(l.root, "writer")
			for _, d := range []string{kwork, wmnt} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", l.lowers(), l.upper, kwork)
			switch writer {
			case "kernel":
				mountStack(t, "kernel", opts, wmnt)
			default:
				exe, err := exec.LookPath("fuse-overlayfs")
				if err != nil {
					t.Skip("fuse-overlayfs not installed (apt-get install fuse-overlayfs)")
				}
				if out, err := exec.Command(exe, "-o", opts, wmnt).CombinedOutput(); err != nil {
					t.Fatalf("fuse-overlayfs -o %s %s: %v: %s", opts, wmnt, err, out)
				}
				t.Cleanup(func() { unmount(t, wmnt) })
				defer func() {
					// Its daemon must be gone before the upper is committed.
					deadline := time.Now().Add(10 * time.Second)
					for len(daemons(t, exe, wmnt)) > 0 && time.Now().Before(deadline) {
						time.Sleep(20 * time.Millisecond)
					}
				}()
			}
			labChanges(t, wmnt)
			want, err := takeSnapshot(wmnt, snapMerged)
			if err != nil {
				t.Fatal(err)
			}
			unmount(t, wmnt)
			if writer != "kernel" {
				exe, _ := exec.LookPath("fuse-overlayfs")
				deadline := time.Now().Add(10 * time.Second)
				for len(daemons(t, exe, wmnt)) > 0 {
					if time.Now().After(deadline) {
						t.Fatalf("fuse-overlayfs for %s still running after unmount", wmnt)
					}
					time.Sleep(20 * time.Millisecond)
				}
			}

			checkDiff(t, labDiff, l.lowers(), l.upper)
			uwork := filepath.Join(l.root, "uwork")
			id, errOut := commitMount(t, epoch, l.lowers(), l.upper, "-w", uwork, "-m", "from "+writer)
			t.Logf("offline commit of the %s upper: %s %s", writer, id, strings.TrimSpace(errOut))
			if id != unionID {
				t.Errorf("the lab's changes made by %s commit as %s, made by unionmount as %s", writer, id, unionID)
			}
			layer1 := filepath.Join(uwork, "layers", "1")
			if names := dirNames(t, l.upper); len(names) > 0 {
				t.Errorf("upper after the commit holds %v", names)
			}

			mountStack(t, "union", fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", l.lowers(), l.upper, uwork), l.merged)
			got, err := takeSnapshot(l.merged, snapMerged)
			if err != nil {
				t.Fatal(err)
			}
			if writer != "kernel" {
				dropFuseOverlayfsXattrs(got)
			}
			reportDiffs(t, "unionmount over the committed "+writer+" upper",
				diffSnapshots(got, want, writer+" before the commit", cmpOpts{ino: true}), nil)
			rows := layersTable(t, l.merged)
			if len(rows) != 4 {
				t.Fatalf("layers lists %d layers, want 4: %q", len(rows), rows)
			}
			layerRow(t, rows[1], "committed", shortOf(id), "from "+writer, layer1)
			checkDiff(t, "", l.merged)

			// The committed layer is an ordinary overlay lower.

			kro := filepath.Join(l.root, "kro")
			if err := os.Mkdir(kro, 0o755); err != nil {
				t.Fatal(err)
			}
			mountStack(t, "kernel", "ro,lowerdir="+layer1+":"+l.lowers(), kro)
			gotK, err := takeSnapshot(kro, snapForeign)
			if err != nil {
				// A whiteout left inside an opaque directory of a lower is
				// listed by the kernel but cannot be looked up.
				t.Fatalf("kernel overlayfs over the committed layer cannot list it: %v; it lists app/data as %v",
					err, dirNames(t, filepath.Join(kro, "app", "data")))
			}
			if writer != "kernel" {
				dropFuseOverlayfsXattrs(gotK)
			}
			reportDiffs(t, "kernel overlayfs read-only over the committed layer",
				diffSnapshots(gotK, want, writer+" before the commit", cmpOpts{ino: true, noDino: true}), nil)
		})
	}
}

// dropFuseOverlayfsXattrs removes fuse-overlayfs's bookkeeping xattrs
// (user.fuseoverlayfs.origin) from a snapshot. fuse-overlayfs hides them in
// its own mount; the kernel, mounting its upper, shows them as any user.*
// xattr, and unionmount does as the kernel does. (The layer tar leaves
// them out.)
func dropFuseOverlayfsXattrs(s snapshot) {
	for _, o := range s {
		var keep []string
		for _, x := range strings.Split(o.xattrs, " ") {
			if x != "" && !strings.HasPrefix(x, "user.fuseoverlayfs.") {
				keep = append(keep, x)
			}
		}
		o.xattrs = strings.Join(keep, " ")
	}
}

// TestCommitMmap writes through a shared writable mapping made before a
// commit, after it: the pages reach the file in the new upper, never the
// committed layer.
func TestCommitMmap(t *testing.T) {
	needFUSE(t)
	l := newLab(t)
	mountUnion(t, l.lowers(), l.upper, l.merged)
	p := filepath.Join(l.merged, "mapped")
	if err := os.WriteFile(p, []byte(strings.Repeat("-", 8192)), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Skipf("mmap MAP_SHARED on the mount: %v", err)
	}
	defer unix.Munmap(mem)
	copy(mem, "before")
	commitMount(t, nil, l.merged)
	layer1 := filepath.Join(l.work, "layers", "1")
	if data, err := os.ReadFile(filepath.Join(layer1, "mapped")); err != nil || !strings.HasPrefix(string(data), "before--") {
		t.Errorf("the committed layer does not hold what was written through the mapping before the commit: %.10q, %v", data, err)
	}
	frozen := layerState(t, layer1)
	copy(mem[4096:], "after")
	if err := unix.Msync(mem, unix.MS_SYNC); err != nil {
		t.Fatalf("msync: %v", err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	want := "before" + strings.Repeat("-", 4090) + "after" + strings.Repeat("-", 4091)
	if data, err := os.ReadFile(p); err != nil || string(data) != want {
		t.Errorf("merged file after writing through the mapping: %v, same as written: %v", err, string(data) == want)
	}
	if data, err := os.ReadFile(filepath.Join(l.upper, "mapped")); err != nil || string(data) != want {
		t.Errorf("upper file after writing through the mapping: %v, same as written: %v", err, string(data) == want)
	}
	if now := layerState(t, layer1); now != frozen {
		t.Errorf("writing through a mapping made before the commit changed the committed layer: %s", firstDiffLine(frozen, now))
	}
}

// TestCommitHardLinkedLower changes one name of a lower file that has two
// (the link index serves both names the copy) and commits. The committed
// layer holds the changed name only (a layer cannot link into the layers
// below: cow/commit.go), so after the commit the other name shows the
// lower data again, as a remount does. The changed name must keep showing
// its committed data, and the live view must be what a remount shows.
func TestCommitHardLinkedLower(t *testing.T) {
	needFUSE(t)
	l := newLab(t)
	a, b := filepath.Join(l.base, "etc", "a"), filepath.Join(l.base, "etc", "b")
	if err := os.WriteFile(a, []byte("orig\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(a, b); err != nil {
		t.Fatal(err)
	}
	mountUnion(t, l.lowers(), l.upper, l.merged)
	ma, mb := filepath.Join(l.merged, "etc", "a"), filepath.Join(l.merged, "etc", "b")
	f, err := os.OpenFile(ma, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("more\n")
	f.Close()
	read := func(p string) string {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("read %s: %v", p, err)
		}
		return string(data)
	}
	if ga, gb := read(ma), read(mb); ga != "orig\nmore\n" || gb != ga {
		t.Fatalf("before the commit: a %q, b %q; want both %q", ga, gb, "orig\nmore\n")
	}
	commitMount(t, nil, l.merged)
	if data, err := os.ReadFile(filepath.Join(l.work, "layers", "1", "etc", "a")); err != nil || string(data) != "orig\nmore\n" {
		t.Errorf("committed layer etc/a: %q, %v", data, err)
	}
	liveA, liveB := read(ma), read(mb)
	if liveA != "orig\nmore\n" {
		t.Errorf("right after the commit, etc/a reads %q, want its committed data %q", liveA, "orig\nmore\n")
	}
	unmount(t, l.merged)
	mountUnion(t, l.lowers(), l.upper, l.merged)
	if ra, rb := read(ma), read(mb); ra != liveA || rb != liveB {
		t.Errorf("after the commit the mount showed a %q, b %q; after a remount a %q, b %q", liveA, liveB, ra, rb)
	}
}
