package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// This file kills the daemon with SIGKILL around a live commit, and the
// commit command while it hashes a big layer, and checks that the layer
// stack stays consistent: after a remount the merged view is the one
// before the commit (a commit never changes it), WORK/layers holds only
// whole layers, and the lowers were never touched. The kill points are
// random; the seed is logged (UNIONMOUNT_CRASH_SEED replays a run).

// committedNames matches what WORK/layers may hold: layer N and its
// metadata N.json.
var committedNames = regexp.MustCompile(`^([1-9][0-9]*)(\.json)?$`)

// checkCommitted checks that work holds only unionmount's directories and
// WORK/layers only the layers 1..n, each maybe with its metadata, and
// returns n and the layers that have metadata.
func checkCommitted(t *testing.T, work string) (n int, meta map[int]bool) {
	t.Helper()
	for _, name := range dirNames(t, work) {
		if !slices.Contains([]string{"work", "layers", "linkindex"}, name) {
			t.Errorf("%s holds %s", work, name)
		}
	}
	meta = map[int]bool{}
	seqs := map[int]bool{}
	for _, name := range dirNames(t, filepath.Join(work, "layers")) {
		m := committedNames.FindStringSubmatch(name)
		if m == nil {
			t.Errorf("%s/layers holds %s, which is no layer", work, name)
			continue
		}
		k, _ := strconv.Atoi(m[1])
		fi, err := os.Lstat(filepath.Join(work, "layers", name))
		if err != nil {
			t.Fatal(err)
		}
		if m[2] != "" {
			meta[k] = true
			if !fi.Mode().IsRegular() {
				t.Errorf("%s/layers/%s is %v", work, name, fi.Mode())
			}
			continue
		}
		if !fi.IsDir() {
			t.Errorf("%s/layers/%s is %v, not a directory", work, name, fi.Mode())
		}
		seqs[k] = true
		n = max(n, k)
	}
	if len(seqs) != n {
		t.Errorf("%s/layers holds layers %v, not 1..%d", work, seqs, n)
	}
	for k := range meta {
		if !seqs[k] {
			t.Errorf("%s/layers holds %d.json but no layer %d", work, k, k)
		}
	}
	return n, meta
}

// TestCommitCrashDaemon kills the daemon at a random moment around a live
// commit of a few hundred new files (and of changes over the layers
// committed in earlier rounds), cleans the dead mount up, mounts again
// with the same arguments and checks the view, WORK/layers and the lowers.
func TestCommitCrashDaemon(t *testing.T) {
	needRoot(t)
	needFUSE(t)
	seed := crashSeed(t)
	rng := rand.New(rand.NewPCG(seed, 3))
	l := newLab(t)
	before := map[string]map[string]string{l.base: lowerState(t, l.base), l.extra: lowerState(t, l.extra)}

	const rounds, files = 7, 300 // round 0 calibrates, without a kill
	outcomes := map[string]int{}
	var took time.Duration
	for r := range rounds {
		cmd := startForeground(t, l.lowers(), l.upper, l.merged)
		if pids := daemons(t, binary, l.merged); !slices.Contains(pids, cmd.Process.Pid) {
			t.Fatalf("round %d: the daemon %d is not among the mount's processes %v", r, cmd.Process.Pid, pids)
		}
		dir := filepath.Join(l.merged, fmt.Sprintf("r%d", r))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for k := range files {
			data := strings.Repeat(fmt.Sprintf("round %d file %d\n", r, k), 1+k%50)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", k)), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// Changes over earlier rounds' layers: a copy-up, a whiteout, a
		// rename, and an append to a lower file.
		if r > 0 {
			prev := filepath.Join(l.merged, fmt.Sprintf("r%d", r-1))
			if err := os.WriteFile(filepath.Join(prev, "f000"), []byte("rewritten\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(prev, "f001")); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(filepath.Join(prev, "f002"), filepath.Join(prev, "g002")); err != nil {
				t.Fatal(err)
			}
		}
		f, err := os.OpenFile(filepath.Join(l.merged, "etc", "hostname"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "round %d\n", r)
		f.Close()
		want := fullListing(t, l.merged)
		nBefore, _ := checkCommitted(t, l.work)

		commit := exec.Command(binary, "commit", l.merged, "-m", fmt.Sprintf("round %d", r))
		var out strings.Builder
		commit.Stdout, commit.Stderr = &out, &out
		start := time.Now()
		if err := commit.Start(); err != nil {
			t.Fatal(err)
		}
		cliDone := make(chan struct{})
		var cliErr error
		go func() { cliErr = commit.Wait(); close(cliDone) }()
		if r == 0 {
			// Calibration: how long a commit takes here, start to end.
			<-cliDone
			if cliErr != nil {
				t.Fatalf("commit: %v\n%s", cliErr, out.String())
			}
			took = time.Since(start)
			t.Logf("round 0: a commit without a kill took %v", took.Round(time.Millisecond))
			unmount(t, l.merged)
			continue
		}
		var when string
		if r%2 == 1 {
			// Anywhere in the command's life, which is mostly flushing
			// the mount and hashing: the daemon's part is short.
			delay := time.Duration(rng.Int64N(int64(took * 3 / 2)))
			time.Sleep(delay)
			when = fmt.Sprintf("%v after starting the commit", delay.Round(time.Millisecond))
		} else {
			// As soon as the new layer's directory is there: between its
			// making and the swap with the upper, or just after.
			next := filepath.Join(l.work, "layers", strconv.Itoa(nBefore+1))
			for i := 0; ; i++ {
				if _, err := os.Lstat(next); err == nil || i == 100000 {
					break
				}
				select {
				case <-cliDone:
					i = 100000
				default:
				}
			}
			when = fmt.Sprintf("when %s appeared (%v after starting the commit)", next, time.Since(start).Round(time.Millisecond))
		}
		killDaemon(t, cmd, l.merged, cliDone)
		<-cliDone
		outcome := "commit failed"
		if cliErr == nil {
			outcome = "commit finished"
		}
		nAfter, _ := checkCommitted(t, l.work)
		switch {
		case nAfter == nBefore+1:
			// Killed before the swap: an empty layer, the changes still
			// in the upper; after it: the changes in the layer, the
			// upper empty. Nothing in between.
			inLayer := dirNames(t, filepath.Join(l.work, "layers", strconv.Itoa(nAfter)))
			inUpper := dirNames(t, l.upper)
			switch {
			case len(inLayer) == 0 && len(inUpper) > 0:
				outcome += ", empty layer made"
			case len(inLayer) > 0 && len(inUpper) == 0:
				outcome += ", layer made"
			default:
				t.Errorf("round %d: the new layer holds %v and the upper %v", r, inLayer, inUpper)
			}
		case nAfter != nBefore:
			t.Errorf("round %d: %d layers before the commit, %d after", r, nBefore, nAfter)
		}
		outcomes[outcome]++
		left := workLeftovers(t, l.work)
		t.Logf("round %d: killed %s: %s (%d work leftovers): %s",
			r, when, outcome, len(left), strings.TrimSpace(out.String()))
		if cliErr == nil && nAfter == nBefore {
			t.Errorf("round %d: the commit succeeded but made no layer", r)
		}

		startForeground(t, l.lowers(), l.upper, l.merged)
		checkListing(t, fmt.Sprintf("round %d: merged view after the crash and a remount (want: as before the commit)", r),
			fullListing(t, l.merged), want)
		if rows := layersTable(t, l.merged); len(rows) != 1+nAfter+2 {
			t.Errorf("round %d: layers lists %d layers, want %d", r, len(rows), 1+nAfter+2)
		}
		if left := workLeftovers(t, l.work); len(left) > 0 {
			t.Errorf("round %d: remount left %v in %s/work", r, left, l.work)
		}
		unmount(t, l.merged)
	}
	t.Logf("outcomes: %v", outcomes)
	checkLowersUnchanged(t, before)
}

// TestCommitCrashCLI kills `unionmount commit` while it hashes a big layer
// (after the daemon has made the layer): the layer stays, the view is
// right, layers lists it with id "-", and the next commit works.
func TestCommitCrashCLI(t *testing.T) {
	needRoot(t)
	needFUSE(t)
	l := newLab(t)
	// An 8 GiB sparse file: hashing reads all of it, for seconds.
	if err := os.Mkdir(filepath.Join(l.upper, "big"), 0o755); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(l.upper, "big", "huge")
	if err := os.WriteFile(huge, []byte("head\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(huge, 8<<30); err != nil {
		t.Fatal(err)
	}
	mountUnion(t, l.lowers(), l.upper, l.merged)
	labChanges(t, l.merged)
	// The listing reads every file: leave the big one to a stat.
	view := func() map[string]string {
		all := map[string]string{}
		for _, sub := range []string{"app", "etc", "manual"} {
			for p, v := range fullListing(t, filepath.Join(l.merged, sub)) {
				all[sub+"/"+p] = v
			}
		}
		fi, err := os.Stat(filepath.Join(l.merged, "big", "huge"))
		if err != nil {
			t.Fatal(err)
		}
		all["big/huge"] = fmt.Sprintf("%v %d %v", fi.Mode(), fi.Size(), fi.ModTime())
		return all
	}
	want := view()

	layer1 := filepath.Join(l.work, "layers", "1")
	commit := exec.Command(binary, "commit", l.merged, "-m", "killed")
	var out strings.Builder
	commit.Stdout, commit.Stderr = &out, &out
	if err := commit.Start(); err != nil {
		t.Fatal(err)
	}
	cliDone := make(chan error, 1)
	go func() { cliDone <- commit.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(layer1, "big", "huge")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			commit.Process.Kill()
			<-cliDone
			t.Fatalf("no layer 1 after 10s: %s", out.String())
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	if err := commit.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	err := <-cliDone
	if cliExitCode(err) == 0 {
		t.Fatalf("the commit finished before it was killed (hashing 8 GiB took < 20ms?): %s", out.String())
	}
	t.Logf("commit killed while hashing: %v, output %q", err, out.String())

	n, meta := checkCommitted(t, l.work)
	if n != 1 || meta[1] {
		t.Errorf("after the kill: %d layers, metadata %v; want layer 1 without metadata", n, meta)
	}
	checkListing(t, "merged view after the commit command was killed", view(), want)
	if names := dirNames(t, l.upper); len(names) > 0 {
		t.Errorf("upper holds %v", names)
	}
	rows := layersTable(t, l.merged)
	if len(rows) != 4 {
		t.Fatalf("layers lists %d layers, want 4: %q", len(rows), rows)
	}
	layerRow(t, rows[1], "committed", "-", "-", layer1)

	// The mount goes on: a change and another commit.
	if err := os.WriteFile(filepath.Join(l.merged, "after"), []byte("after\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	id, _ := commitMount(t, nil, l.merged, "-m", "next")
	rows = layersTable(t, l.merged)
	if len(rows) != 5 {
		t.Fatalf("layers lists %d layers, want 5: %q", len(rows), rows)
	}
	layerRow(t, rows[1], "committed", shortOf(id), "next", filepath.Join(l.work, "layers", "2"))
	layerRow(t, rows[2], "committed", "-", "-", layer1)
	unmount(t, l.merged)
	mountUnion(t, l.lowers(), l.upper, l.merged)
	want["after"] = ""
	got := view()
	if data, err := os.ReadFile(filepath.Join(l.merged, "after")); err != nil || string(data) != "after\n" {
		t.Errorf("after a remount, /after: %q, %v", data, err)
	}
	got["after"] = ""
	checkListing(t, "merged view after a remount", got, want)
}
