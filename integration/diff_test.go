package integration

import (
	"fmt"
	"testing"
)

// The differential tests run the same operations on a kernel overlay mount
// and on a unionmount mount over identical layers and require the same
// errno from every operation, the same merged tree, the same upper left
// behind, and the same tree again after unmount and remount.
//
// Validate the harness itself with two kernel mounts:
//
//	go test ./integration -run 'TestDiff|TestInterop' -diff.peer=kernel

// TestDiffStatic compares the untouched merged view and read-only
// operations on every path in it.
func TestDiffStatic(t *testing.T) {
	p := newPair(t, defaultStack)
	want, got := p.snapMerged(t)
	reportDiffs(t, "merged tree", diffSnapshots(got, want, "kernel", cmpOpts{ino: true}), nil)
	i := 0
	for _, path := range sortedKeys(want) {
		for _, o := range []op{
			{kind: "stat", path: path},
			{kind: "statfollow", path: path},
			{kind: "readdir", path: path},
			{kind: "read", path: path},
			{kind: "readlink", path: path},
			{kind: "listxattr", path: path},
			{kind: "getxattr", path: path, name: "user.color"},
			{kind: "getxattr", path: path, name: "trusted.overlay.opaque"},
			{kind: "getxattr", path: path, name: "trusted.overlay.origin"},
		} {
			if want[path].typ == "chr" && o.kind == "read" {
				continue // device access depends on nodev, not on the union
			}
			p.do(t, i, o)
			i++
		}
	}
	// Names that must not exist.
	for _, path := range []string{"hidden", "gone", "gone/x", "d/g", "opq/below", "upw.txt", "wdir/x", "nonexistent"} {
		p.do(t, i, op{kind: "stat", path: path})
		i++
	}
}

// scenario is a named sequence of operations.
type scenario struct {
	name string
	ops  []op
}

// TestDiffScenarios runs the scripted corpus.
func TestDiffScenarios(t *testing.T) {
	for _, sc := range corpus {
		t.Run(sc.name, func(t *testing.T) {
			runScenario(t, defaultStack, sc.ops)
		})
	}
}

// TestDiffHardlinks runs hardlinkCorpus against a kernel mount with
// index=on. Uppers are not compared: the kernel's index keeps its own names
// in the workdir, and so does unionmount's.
func TestDiffHardlinks(t *testing.T) {
	for _, sc := range hardlinkCorpus {
		t.Run(sc.name, func(t *testing.T) {
			p := newPair(t, defaultStack, withKernelIndex)
			k0, u0 := p.snapMerged(t)
			static := setOf(diffSnapshots(u0, k0, "kernel", cmpOpts{ino: true}))
			for i, o := range sc.ops {
				p.do(t, i, o)
			}
			k1, u1 := p.snapMerged(t)
			reportDiffs(t, "merged tree after the ops", diffSnapshots(u1, k1, "kernel index=on", cmpOpts{ino: true}), static)
			p.unmount(t)
			p.mount(t)
			k2, u2 := p.snapMerged(t)
			reportDiffs(t, "merged tree after remount", diffSnapshots(u2, k2, "kernel index=on", cmpOpts{ino: true}), static)
		})
	}
}

// runScenario runs ops on a fresh pair and compares everything after.
// Differences already present in the untouched view are reported by
// TestDiffStatic and not again here.
func runScenario(t *testing.T, stack stackSpec, ops []op) {
	p := newPair(t, stack)
	k0, u0 := p.snapMerged(t)
	static := setOf(diffSnapshots(u0, k0, "kernel", cmpOpts{ino: true}))
	failed := false
	for i, o := range ops {
		want, got := p.do(t, i, o)
		failed = failed || want != got
	}
	k1, u1 := p.snapMerged(t)
	n := reportDiffs(t, "merged tree after the ops", diffSnapshots(u1, k1, "kernel", cmpOpts{ino: true}), static)
	if !ignored("ino", "") {
		n += reportDiffs(t, "inode numbers changed by the ops", inoChangeDiffs(inoChanges(u0, u1), inoChanges(k0, k1)), nil)
	}

	p.unmount(t)
	ku, uu := p.snapUpper(t)
	n += reportDiffs(t, "upper left behind", diffSnapshots(uu, ku, "kernel", cmpOpts{ino: true}), nil)

	p.mount(t)
	k2, u2 := p.snapMerged(t)
	n += reportDiffs(t, "merged tree after remount", diffSnapshots(u2, k2, "kernel", cmpOpts{ino: true}), static)
	if !ignored("ino", "") {
		n += reportDiffs(t, "inode numbers changed by remount", inoChangeDiffs(inoChanges(u1, u2), inoChanges(k1, k2)), nil)
	}
	if failed || n > 0 {
		t.Logf("ops:\n%s", opsString(ops))
	}
}

// inoChangeDiffs compares two lists of paths whose inode number changed.
func inoChangeDiffs(got, want []string) []string {
	g, w := setOf(got), setOf(want)
	var out []string
	for _, p := range got {
		if !w[p] {
			out = append(out, fmt.Sprintf("%s: st_ino changed: got yes, want no (kernel)", p))
		}
	}
	for _, p := range want {
		if !g[p] {
			out = append(out, fmt.Sprintf("%s: st_ino changed: got no, want yes (kernel)", p))
		}
	}
	return out
}
