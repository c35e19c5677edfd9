package cow

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func (ts *testStack) create(t *testing.T, rel, data string, who Owner) *Object {
	t.Helper()
	dir, dirRel, name, _ := ts.at(t, rel)
	fd, o, st, err := ts.Create(dir, dirRel, name, unix.O_RDWR, 0o640, who)
	if err != nil {
		t.Fatalf("create %s: %v", rel, err)
	}
	defer unix.Close(fd)
	// The attributes Create returns are those of the new file.
	if want, err := ts.Stat(o, rel); err != nil || st != want {
		t.Fatalf("create %s: returned attributes %+v, Stat gives %+v (%v)", rel, st, want, err)
	}
	if _, err := unix.Write(fd, []byte(data)); err != nil {
		t.Fatal(err)
	}
	return o
}

func (ts *testStack) unlink(t *testing.T, rel string) {
	t.Helper()
	dir, dirRel, name, o := ts.at(t, rel)
	if o == nil {
		t.Fatalf("unlink %s: no such name", rel)
	}
	if err := ts.Unlink(dir, dirRel, name, o); err != nil {
		t.Fatalf("unlink %s: %v", rel, err)
	}
}

func (ts *testStack) mkdir(t *testing.T, rel string) *Object {
	t.Helper()
	dir, dirRel, name, _ := ts.at(t, rel)
	o, err := ts.Make(dir, dirRel, name, NewObject{Mode: unix.S_IFDIR | 0o755}, Owner{})
	if err != nil {
		t.Fatalf("mkdir %s: %v", rel, err)
	}
	return o
}

// absent fails unless the merged view has no rel.
func (ts *testStack) absent(t *testing.T, rel string) {
	t.Helper()
	if _, err := ts.lookup(rel); !errors.Is(err, unix.ENOENT) {
		t.Errorf("%s: lookup got %v, want ENOENT", rel, err)
	}
}

func TestCreate(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name   string
		upper  []entry
		lower  []entry
		rel    string
		wantWO bool // a lower name that stays hidden below the new file
	}{
		{name: "fresh", rel: "new"},
		{name: "over upper whiteout", upper: []entry{whiteout("a")}, lower: []entry{file("a", "old")}, rel: "a"},
		{name: "over whiteout of a dir", upper: []entry{whiteout("d")}, lower: []entry{file("d/x", "old")}, rel: "d"},
		{name: "in lower dir", lower: []entry{file("d/x", "old")}, rel: "d/new"},
		{name: "in whiteout-hidden lower name's dir", upper: []entry{dir("d"), whiteout("d/a")}, lower: []entry{file("d/a", "old")}, rel: "d/a"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestStack(t, tc.upper, tc.lower)
			o := ts.create(t, tc.rel, "fresh data", Owner{UID: 1000, GID: 1001})
			if !o.Upper() || o.Mode&unix.S_IFMT != unix.S_IFREG {
				t.Errorf("object upper %v mode %o, want an upper regular file", o.Upper(), o.Mode)
			}
			st := lstat(t, filepath.Join(ts.upper, tc.rel))
			if st.Mode != unix.S_IFREG|0o640 || st.Uid != 1000 || st.Gid != 1001 {
				t.Errorf("upper mode %o owner %d:%d, want regular 0640 1000:1001", st.Mode, st.Uid, st.Gid)
			}
			if got := ts.read(t, tc.rel); got != "fresh data" {
				t.Errorf("merged data %q, want %q", got, "fresh data")
			}
			if m := ts.mustLookup(t, tc.rel); m.Ino != o.Ino || !m.Upper() {
				t.Errorf("lookup ino %d upper %v, want %d true", m.Ino, m.Upper(), o.Ino)
			}
		})
	}
}

func TestCreateExisting(t *testing.T) {
	ts := newTestStack(t, []entry{file("a", "up")}, nil)
	root := ts.mustLookup(t, "")
	_, _, _, err := ts.Create(root, "", "a", unix.O_RDWR, 0o644, Owner{})
	wantErrno(t, err, unix.EEXIST)
	if got := ts.read(t, "a"); got != "up" {
		t.Errorf("a is %q, want %q", got, "up")
	}
}

func TestMakeDirOpaque(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name       string
		upper      []entry
		lower      []entry
		pre        string // a directory to make first
		rel        string
		wantOpaque bool
	}{
		// Kernel 6.18 marks only a directory that replaces a whiteout
		// (the differential tests check it against the kernel).
		{name: "in merged root", lower: []entry{file("x", "")}, rel: "n"},
		{name: "in merged dir", upper: []entry{dir("d")}, lower: []entry{file("d/x", "")}, rel: "d/n"},
		{name: "in lower-only dir", lower: []entry{file("d/x", "")}, rel: "d/n"},
		{name: "over a lower whiteout", upper: []entry{dir("d")}, lower: []entry{whiteout("d/w")}, rel: "d/w"},
		{name: "over whiteout", upper: []entry{whiteout("w")}, lower: []entry{file("w/k", "")}, rel: "w", wantOpaque: true},
		{name: "in pure upper dir", upper: []entry{dir("u")}, lower: []entry{file("x", "")}, rel: "u/n"},
		{name: "in new dir", lower: []entry{file("x", "")}, pre: "p", rel: "p/n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestStack(t, tc.upper, tc.lower)
			if tc.pre != "" {
				ts.mkdir(t, tc.pre)
			}
			o := ts.mkdir(t, tc.rel)
			up := filepath.Join(ts.upper, tc.rel)
			st := lstat(t, up)
			if st.Mode&unix.S_IFMT != unix.S_IFDIR || !o.IsDir() || !o.Upper() {
				t.Fatalf("upper mode %o, object mode %o upper %v: want an upper directory", st.Mode, o.Mode, o.Upper())
			}
			if got := isOpaqueAt(up); got != tc.wantOpaque {
				t.Errorf("opaque %v, want %v", got, tc.wantOpaque)
			}
			if ents, err := ts.Readdir(ts.mustLookup(t, tc.rel), tc.rel); err != nil || len(ents) != 0 {
				t.Errorf("new directory lists %v, %v; want nothing", ents, err)
			}
		})
	}
}

func TestMakeOverWhiteout(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name string
		obj  NewObject
	}{
		{"symlink", NewObject{Mode: unix.S_IFLNK | 0o777, Target: "t"}},
		{"fifo", NewObject{Mode: unix.S_IFIFO | 0o600}},
		{"chardev", NewObject{Mode: unix.S_IFCHR | 0o600, Rdev: uint32(unix.Mkdev(1, 3))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestStack(t, []entry{whiteout("x")}, []entry{file("x", "old")})
			root := ts.mustLookup(t, "")
			o, err := ts.Make(root, "", "x", tc.obj, Owner{})
			if err != nil {
				t.Fatal(err)
			}
			st := lstat(t, filepath.Join(ts.upper, "x"))
			if st.Mode&unix.S_IFMT != tc.obj.Mode&unix.S_IFMT || o.Mode&unix.S_IFMT != tc.obj.Mode&unix.S_IFMT ||
				uint64(tc.obj.Rdev) != st.Rdev {
				t.Errorf("upper mode %o rdev %x, object mode %o; want %o %x", st.Mode, st.Rdev, o.Mode, tc.obj.Mode, tc.obj.Rdev)
			}
		})
	}
}

func TestUnlink(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name         string
		upper, lower []entry
		rel          string
		wantWhiteout bool
	}{
		{name: "lower file", lower: []entry{file("a", "l")}, rel: "a", wantWhiteout: true},
		{name: "lower file in lower dir", lower: []entry{file("d/a", "l")}, rel: "d/a", wantWhiteout: true},
		{name: "upper only", upper: []entry{file("a", "u")}, lower: []entry{file("x", "")}, rel: "a"},
		{name: "upper over lower", upper: []entry{file("a", "u")}, lower: []entry{file("a", "l")}, rel: "a", wantWhiteout: true},
		{name: "upper over whiteout-hidden lower", upper: []entry{file("a", "u")},
			lower: []entry{whiteout("a")}, rel: "a"},
		{name: "lower symlink", lower: []entry{symlink("a", "x")}, rel: "a", wantWhiteout: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var lowers [][]entry
			if tc.name == "upper over whiteout-hidden lower" {
				lowers = [][]entry{tc.lower, {file("a", "hidden")}}
			} else {
				lowers = [][]entry{tc.lower}
			}
			ts := newTestStack(t, tc.upper, lowers...)
			ts.unlink(t, tc.rel)
			ts.absent(t, tc.rel)
			up := filepath.Join(ts.upper, tc.rel)
			if tc.wantWhiteout && !isWhiteoutAt(up) {
				t.Errorf("no whiteout at %s in the upper", tc.rel)
			}
			if !tc.wantWhiteout && exists(up) {
				t.Errorf("%s left in the upper", tc.rel)
			}
			dirRel, _ := split(tc.rel)
			ents, err := ts.Readdir(ts.mustLookup(t, dirRel), dirRel)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if join(dirRel, e.Name) == tc.rel {
					t.Errorf("readdir still lists %s", tc.rel)
				}
			}
		})
	}
}

func TestRmdir(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name         string
		upper        []entry
		lowers       [][]entry
		unlink       []string // names to remove first
		rel          string
		wantErr      unix.Errno
		wantWhiteout bool
	}{
		{name: "only whiteouts inside", lowers: [][]entry{{file("d/x", ""), file("d/y", "")}},
			unlink: []string{"d/x", "d/y"}, rel: "d", wantWhiteout: true},
		{name: "lower empty dir", lowers: [][]entry{{dir("d"), file("x", "")}}, rel: "d", wantWhiteout: true},
		{name: "upper only with whiteouts", upper: []entry{dir("d"), whiteout("d/w")}, lowers: [][]entry{{file("x", "")}}, rel: "d"},
		{name: "merged with only whiteouts", upper: []entry{dir("d"), whiteout("d/x"), file("d/u", "")},
			lowers: [][]entry{{file("d/x", "")}}, unlink: []string{"d/u"}, rel: "d", wantWhiteout: true},
		{name: "opaque upper over non-empty lower", upper: []entry{opaque("d")},
			lowers: [][]entry{{file("d/x", "")}}, rel: "d", wantWhiteout: true},
		{name: "non-empty lower", lowers: [][]entry{{file("d/x", "")}}, rel: "d", wantErr: unix.ENOTEMPTY},
		{name: "non-empty lower below empty upper", upper: []entry{dir("d")},
			lowers: [][]entry{{dir("d")}, {file("d/x", "")}}, rel: "d", wantErr: unix.ENOTEMPTY},
		{name: "non-empty upper", upper: []entry{file("d/u", "")}, lowers: [][]entry{{file("x", "")}},
			rel: "d", wantErr: unix.ENOTEMPTY},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestStack(t, tc.upper, tc.lowers...)
			for _, u := range tc.unlink {
				ts.unlink(t, u)
			}
			dir, dirRel, name, o := ts.at(t, tc.rel)
			err := ts.Rmdir(dir, dirRel, name, o)
			up := filepath.Join(ts.upper, tc.rel)
			if tc.wantErr != 0 {
				wantErrno(t, err, tc.wantErr)
				if _, err := ts.lookup(tc.rel); err != nil {
					t.Errorf("%s gone after a failed rmdir: %v", tc.rel, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ts.absent(t, tc.rel)
			if tc.wantWhiteout && !isWhiteoutAt(up) {
				t.Errorf("no whiteout at %s in the upper", tc.rel)
			}
			if !tc.wantWhiteout && exists(up) {
				t.Errorf("%s left in the upper", tc.rel)
			}
		})
	}
}

func TestLink(t *testing.T) {
	ts := newTestStack(t, nil, []entry{file("d/f", "data"), dir("e")})
	target := ts.mustLookup(t, "d/f")
	dir := ts.mustLookup(t, "e")
	o, err := ts.Link(target, "d/f", dir, "e", "g")
	if err != nil {
		t.Fatal(err)
	}
	if o.Ino != target.Ino {
		t.Errorf("link ino %d, want %d", o.Ino, target.Ino)
	}
	for _, rel := range []string{"d/f", "e/g"} {
		m := ts.mustLookup(t, rel)
		st, err := ts.Stat(m, rel)
		if err != nil {
			t.Fatal(err)
		}
		if st.Nlink != 2 || st.Ino != target.Ino || !m.Upper() {
			t.Errorf("%s: nlink %d ino %d upper %v, want 2 %d true", rel, st.Nlink, st.Ino, m.Upper(), target.Ino)
		}
		if got := ts.read(t, rel); got != "data" {
			t.Errorf("%s: %q, want %q", rel, got, "data")
		}
	}
	a, b := lstat(t, filepath.Join(ts.upper, "d/f")), lstat(t, filepath.Join(ts.upper, "e/g"))
	if a.Ino != b.Ino {
		t.Error("upper d/f and e/g are different files")
	}
}

func TestLinkOverWhiteout(t *testing.T) {
	requireRoot(t)
	ts := newTestStack(t, []entry{whiteout("g")}, []entry{file("f", "data"), file("g", "old")})
	root := ts.mustLookup(t, "")
	if _, err := ts.Link(ts.mustLookup(t, "f"), "f", root, "", "g"); err != nil {
		t.Fatal(err)
	}
	if got := ts.read(t, "g"); got != "data" {
		t.Errorf("g: %q, want %q", got, "data")
	}
}

func TestReservedNames(t *testing.T) {
	ts := newTestStack(t, nil, []entry{file("f", "data")})
	root := ts.mustLookup(t, "")
	f := ts.mustLookup(t, "f")
	for _, name := range []string{".wh.x", ".wh..wh..opq"} {
		_, _, _, err := ts.Create(root, "", name, unix.O_RDWR, 0o644, Owner{})
		wantErrno(t, err, unix.EINVAL)
		_, err = ts.Make(root, "", name, NewObject{Mode: unix.S_IFDIR | 0o755}, Owner{})
		wantErrno(t, err, unix.EINVAL)
		_, err = ts.Link(f, "f", root, "", name)
		wantErrno(t, err, unix.EINVAL)
		_, err = ts.Rename(root, "", "f", f, root, "", name, nil, 0)
		wantErrno(t, err, unix.EINVAL)
		if exists(filepath.Join(ts.upper, name)) {
			t.Errorf("%s created in the upper", name)
		}
	}
}

func TestReadOnlyStack(t *testing.T) {
	ts := newROStack(t, []entry{file("f", "data"), dir("d"), file("e/x", "")})
	root := ts.mustLookup(t, "")
	f, d, e := ts.mustLookup(t, "f"), ts.mustLookup(t, "d"), ts.mustLookup(t, "e")
	if !ts.ReadOnly() {
		t.Fatal("stack without upper not read-only")
	}
	ops := map[string]func() error{
		"Create": func() error {
			_, _, _, err := ts.Create(root, "", "n", unix.O_RDWR, 0o644, Owner{})
			return err
		},
		"Make": func() error {
			_, err := ts.Make(root, "", "n", NewObject{Mode: unix.S_IFDIR | 0o755}, Owner{})
			return err
		},
		"Unlink": func() error { return ts.Unlink(root, "", "f", f) },
		"Rmdir":  func() error { return ts.Rmdir(root, "", "d", d) },
		"RmdirNonEmpty": func() error {
			return ts.Rmdir(root, "", "e", e)
		},
		"Link": func() error {
			_, err := ts.Link(f, "f", root, "", "g")
			return err
		},
		"Rename": func() error {
			_, err := ts.Rename(root, "", "f", f, root, "", "g", nil, 0)
			return err
		},
		"CopyUp": func() error {
			_, err := ts.CopyUp(f, "f", true)
			return err
		},
		"OpenWrite": func() error {
			fd, _, err := ts.Open(f, "f", unix.O_WRONLY)
			if err == nil {
				unix.Close(fd)
			}
			return err
		},
		"Setattr": func() error {
			m := uint32(0o600)
			_, _, err := ts.Setattr(f, "f", Attr{Mode: &m, FromHandle: -1})
			return err
		},
		"Setxattr": func() error {
			_, err := ts.Setxattr(f, "f", "user.x", []byte("1"), 0)
			return err
		},
		"Tmpfile": func() error {
			fd, _, err := ts.Tmpfile(root, "", unix.O_RDWR, 0o644, Owner{})
			if err == nil {
				unix.Close(fd)
			}
			return err
		},
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			wantErrno(t, op(), unix.EROFS)
		})
	}
	if got := ts.read(t, "f"); got != "data" {
		t.Errorf("f: %q", got)
	}
}

func TestOpenCleansWork(t *testing.T) {
	requireRoot(t)
	ts := newTestStack(t, nil, []entry{file("f", "x")})
	ts.Close()
	junk := filepath.Join(ts.work, "work")
	buildTree(t, junk, []entry{
		file("#1-1", "half a copy"),
		file("#1-2/deep/er/file", "x").withMode(0o400),
		whiteout("#1-3"),
		symlink("#1-4", "/etc/passwd"),
		fifo("#1-5"),
	})
	if err := os.Chmod(filepath.Join(junk, "#1-2/deep"), 0o500); err != nil {
		t.Fatal(err)
	}
	ts.open(t)
	if ents, _ := os.ReadDir(junk); len(ents) != 0 {
		t.Errorf("work directory still holds %d entries after Open", len(ents))
	}
	if !exists("/etc/passwd") {
		t.Error("the symlink's target went too")
	}
}

func TestOpenConfigErrors(t *testing.T) {
	root := t.TempDir()
	lower, upper, work := filepath.Join(root, "l"), filepath.Join(root, "u"), filepath.Join(root, "w")
	for _, d := range []string{lower, upper, work} {
		os.Mkdir(d, 0o755)
	}
	many := make([]string, MaxLowers+1)
	for i := range many {
		many[i] = lower
	}
	tests := []struct {
		name string
		cfg  Config
		want unix.Errno
	}{
		{"missing lower", Config{Lowers: []string{filepath.Join(root, "nope")}}, unix.ENOENT},
		{"missing upper", Config{Lowers: []string{lower}, Upper: filepath.Join(root, "nope"), Work: work}, unix.ENOENT},
		{"lower is a file", Config{Lowers: []string{"/etc/passwd"}}, unix.ENOTDIR},
		// BUG: Open returns these as errors.New errors that wrap no errno.
		{"no lowers", Config{}, unix.EINVAL},
		{"upper without work", Config{Lowers: []string{lower}, Upper: upper}, unix.EINVAL},
		{"too many lowers", Config{Lowers: many}, unix.EINVAL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(tc.cfg)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			wantErrno(t, err, tc.want)
		})
	}
}
