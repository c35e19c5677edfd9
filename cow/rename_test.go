package cow

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// rename renames src to dst in the merged view of ts with flags.
func (ts *testStack) rename(t *testing.T, src, dst string, flags uint) (*Object, error) {
	t.Helper()
	sd, sdRel, sName, so := ts.at(t, src)
	dd, ddRel, dName, do := ts.at(t, dst)
	if so == nil {
		t.Fatalf("rename: no %s", src)
	}
	return ts.Rename(sd, sdRel, sName, so, dd, ddRel, dName, do, flags)
}

func TestRenameFile(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name          string
		upper, lower  []entry
		src, dst      string
		flags         uint
		wantErr       unix.Errno
		want          map[string]string // merged: describeMerged, "" for absent
		wantWhiteouts []string          // in the upper
	}{
		{
			name:  "lower to new name",
			lower: []entry{file("a", "A")},
			src:   "a", dst: "b",
			want:          map[string]string{"a": "", "b": "file A"},
			wantWhiteouts: []string{"a"},
		},
		{
			name:  "lower to new dir",
			lower: []entry{file("d/a", "A"), dir("e")},
			src:   "d/a", dst: "e/b",
			want:          map[string]string{"d/a": "", "e/b": "file A", "d": "dir"},
			wantWhiteouts: []string{"d/a"},
		},
		{
			name:  "upper only",
			upper: []entry{file("a", "A")}, lower: []entry{file("x", "")},
			src: "a", dst: "b",
			want: map[string]string{"a": "", "b": "file A"},
		},
		{
			name:  "over whiteout",
			upper: []entry{whiteout("w")}, lower: []entry{file("a", "A"), file("w", "old")},
			src: "a", dst: "w",
			want:          map[string]string{"a": "", "w": "file A"},
			wantWhiteouts: []string{"a"},
		},
		{
			name:  "over lower file",
			lower: []entry{file("a", "A"), file("b", "B")},
			src:   "a", dst: "b",
			want:          map[string]string{"a": "", "b": "file A"},
			wantWhiteouts: []string{"a"},
		},
		{
			name:  "noreplace over lower file",
			lower: []entry{file("a", "A"), file("b", "B")},
			src:   "a", dst: "b", flags: unix.RENAME_NOREPLACE,
			wantErr: unix.EEXIST,
			want:    map[string]string{"a": "file A", "b": "file B"},
		},
		{
			name:  "noreplace over whiteout",
			upper: []entry{whiteout("w")}, lower: []entry{file("a", "A"), file("w", "old")},
			src: "a", dst: "w", flags: unix.RENAME_NOREPLACE,
			want:          map[string]string{"a": "", "w": "file A"},
			wantWhiteouts: []string{"a"},
		},
		{
			name:  "exchange lower files",
			lower: []entry{file("a", "A"), file("b", "B")},
			src:   "a", dst: "b", flags: unix.RENAME_EXCHANGE,
			want: map[string]string{"a": "file B", "b": "file A"},
		},
		{
			name:  "exchange lower and upper",
			upper: []entry{file("b", "B")}, lower: []entry{file("a", "A")},
			src: "a", dst: "b", flags: unix.RENAME_EXCHANGE,
			want: map[string]string{"a": "file B", "b": "file A"},
		},
		{
			name:  "exchange with absent",
			lower: []entry{file("a", "A")},
			src:   "a", dst: "b", flags: unix.RENAME_EXCHANGE,
			wantErr: unix.ENOENT,
			want:    map[string]string{"a": "file A", "b": ""},
		},
		{
			name:  "bad flags",
			lower: []entry{file("a", "A")},
			src:   "a", dst: "b", flags: unix.RENAME_WHITEOUT,
			wantErr: unix.EINVAL,
			want:    map[string]string{"a": "file A", "b": ""},
		},
		{
			name:  "dir over dir holding only whiteouts",
			upper: []entry{file("s/f", "F"), dir("d"), whiteout("d/x")}, lower: []entry{file("d/x", "")},
			src: "s", dst: "d",
			want: map[string]string{"s": "", "d": "dir", "d/f": "file F", "d/x": ""},
		},
		{
			name:  "dir over non-empty dir",
			upper: []entry{file("s/f", "F")}, lower: []entry{file("d/x", "")},
			src: "s", dst: "d",
			wantErr: unix.ENOTEMPTY,
			want:    map[string]string{"s/f": "file F", "d/x": "file "},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestStack(t, tc.upper, tc.lower)
			src := ts.mustLookup(t, tc.src)
			o, err := ts.rename(t, tc.src, tc.dst, tc.flags)
			if tc.wantErr != 0 {
				wantErrno(t, err, tc.wantErr)
			} else if err != nil {
				t.Fatal(err)
			} else if o.Ino != src.Ino {
				t.Errorf("renamed object ino %d, want %d", o.Ino, src.Ino)
			}
			for p, want := range tc.want {
				if got := describeMerged(t, ts, p); got != want {
					t.Errorf("%s: got %q, want %q", p, got, want)
				}
			}
			for _, w := range tc.wantWhiteouts {
				if !isWhiteoutAt(filepath.Join(ts.upper, w)) {
					t.Errorf("no whiteout at %s in the upper", w)
				}
			}
			if tc.wantErr == 0 && tc.flags&unix.RENAME_EXCHANGE == 0 {
				if d := ts.mustLookup(t, tc.dst); d.Ino != src.Ino {
					t.Errorf("%s: ino %d, want the source's %d", tc.dst, d.Ino, src.Ino)
				}
			}
		})
	}
}

// TestRenameMergedDir renames a directory with parts in two lowers and the
// upper: its merged tree is copied up whole, opaque at its new name, with a
// whiteout at its old one, and the merged view below it is unchanged.
func TestRenameMergedDir(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name     string
		dst      string
		extraLow []entry
	}{
		{name: "to new name", dst: "e"},
		{name: "into lower dir", dst: "p/e", extraLow: []entry{file("p/q", "")}},
		{name: "over empty lower dir", dst: "e", extraLow: []entry{dir("e")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestStack(t,
				[]entry{file("d/u", "up"), whiteout("d/z"), dir("d/sub")},
				append([]entry{
					file("d/x", "l0x").withXattr("user.k", "v"), file("d/sub/y", "l0y"),
					symlink("d/sub/l", "y"), dir("d/empty").withMode(0o700),
				}, tc.extraLow...),
				[]entry{file("d/z", "l1z"), file("d/sub/w", "l1w"), file("d/x", "hidden"), file("d/sub2/v", "l1v")},
			)
			before := ts.mergedDump(t, "d")
			if _, err := ts.rename(t, "d", tc.dst, 0); err != nil {
				t.Fatal(err)
			}
			ts.absent(t, "d")
			if !isWhiteoutAt(filepath.Join(ts.upper, "d")) {
				t.Error("no whiteout at d in the upper")
			}
			if !isOpaqueAt(filepath.Join(ts.upper, tc.dst)) {
				t.Errorf("%s not opaque in the upper", tc.dst)
			}
			if d := diffMaps(ts.mergedDump(t, tc.dst), before); d != "" {
				t.Errorf("merged tree changed by the rename:\n%s", d)
			}
			// Everything is in the upper now.
			got := dumpTree(t, filepath.Join(ts.upper, tc.dst), false)
			delete(got, ".")
			for k := range before {
				if _, ok := got[k]; !ok && k != "." {
					t.Errorf("%s not in the upper", k)
				}
			}
		})
	}
}

// TestRenameUpperDirIntoMerged checks that an upper-only directory moved
// into a merged directory is made opaque, as the kernel does.
func TestRenameUpperDirIntoMerged(t *testing.T) {
	requireRoot(t)
	ts := newTestStack(t, []entry{file("u/f", "x")}, []entry{file("m/k", ""), file("m/n/hidden", "")})
	ts.unlink(t, "m/n/hidden")
	dir, dirRel, name, n := ts.at(t, "m/n")
	if err := ts.Rmdir(dir, dirRel, name, n); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.rename(t, "u", "m/n", 0); err != nil {
		t.Fatal(err)
	}
	if !isOpaqueAt(filepath.Join(ts.upper, "m/n")) {
		t.Error("m/n not opaque")
	}
	got := ts.mergedDump(t, "m/n")
	if _, ok := got["hidden"]; ok || len(got) != 2 {
		t.Errorf("m/n shows %v, want just f", got)
	}
}
