package mount

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/unionmount/unionmount/fs"
)

func TestSplitLowers(t *testing.T) {
	cases := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{in: "a", want: []string{"a"}},
		{in: "a:b:c", want: []string{"a", "b", "c"}},
		{in: `a\:b:c`, want: []string{"a:b", "c"}},
		{in: `a\\:b`, want: []string{`a\`, "b"}},
		{in: "a::b", wantErr: "empty lower directory"},
		{in: ":a", wantErr: "empty lower directory"},
		{in: "a:", wantErr: "empty lower directory"},
		{in: "", wantErr: "empty lower directory"},
		{in: `a\`, wantErr: "lone backslash"},
		{in: strings.Repeat("a:", MaxLowers) + "a", wantErr: "too many lower directories"},
	}
	for _, tc := range cases {
		got, err := SplitLowers(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("SplitLowers(%q): got %v, want error %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SplitLowers(%q): got %q, %v, want %q", tc.in, got, err, tc.want)
			continue
		}
		if back, _ := SplitLowers(JoinLowers(got)); !reflect.DeepEqual(back, got) {
			t.Errorf("JoinLowers(%q) = %q does not split back", got, JoinLowers(got))
		}
	}
}

func TestSplitOptions(t *testing.T) {
	got := splitOptions(`rw,lowerdir=a\,b:c\:d,,x=\\,ro`)
	want := []string{"rw", `lowerdir=a,b:c\:d`, `x=\\`, "ro"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestParse(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		opts    []string
		want    Options
		wantErr string
	}{
		{
			name: "short form",
			args: []string{"l1:l2", "u", "m"},
			want: Options{Lowers: []string{"l1", "l2"}, Upper: "u", Mountpoint: "m"},
		},
		{
			name: "read-only short form",
			args: []string{"l1:l2", "m"},
			want: Options{Lowers: []string{"l1", "l2"}, Mountpoint: "m"},
		},
		{
			name: "fuse-overlayfs form",
			args: []string{"m"},
			opts: []string{"lowerdir=l1:l2,upperdir=u,workdir=w", "allow_other,default_permissions,userxattr"},
			want: Options{Lowers: []string{"l1", "l2"}, Upper: "u", Work: "w", Mountpoint: "m",
				AllowOther: true, DefaultPermissions: true, UserXattr: true},
		},
		{
			name: "mount.fuse3 order",
			args: []string{"src", "m", "-o", "rw,lowerdir=l1,upperdir=u,dev,suid,noatime"},
			want: Options{Lowers: []string{"l1"}, Upper: "u", Mountpoint: "m", FsName: "src"},
		},
		{
			name: "source is the lowers",
			args: []string{"l1:l2", "m", "-oupperdir=u,workdir=w,ro"},
			want: Options{Lowers: []string{"l1", "l2"}, Upper: "u", Work: "w", Mountpoint: "m", ReadOnly: true},
		},
		{
			name: "last of ro and rw wins",
			args: []string{"l1", "m"},
			opts: []string{"ro", "rw"},
			want: Options{Lowers: []string{"l1"}, Mountpoint: "m"},
		},
		{
			name: "escaped comma in a path",
			args: []string{"m"},
			opts: []string{`lowerdir=a\,b,upperdir=u\,v`},
			want: Options{Lowers: []string{"a,b"}, Upper: "u,v", Mountpoint: "m"},
		},
		{
			name: "metacopy off",
			args: []string{"l", "u", "m"},
			opts: []string{"metacopy=off"},
			want: Options{Lowers: []string{"l"}, Upper: "u", Mountpoint: "m", NoMetacopy: true},
		},
		{
			name: "last metacopy wins",
			args: []string{"l", "u", "m"},
			opts: []string{"metacopy=off", "metacopy=on"},
			want: Options{Lowers: []string{"l"}, Upper: "u", Mountpoint: "m"},
		},
		{
			name: "passthrough on",
			args: []string{"l", "u", "m"},
			opts: []string{"passthrough=on"},
			want: Options{Lowers: []string{"l"}, Upper: "u", Mountpoint: "m", Cache: fs.Cache{Passthrough: fs.PassthroughOn}},
		},
		{
			name: "last passthrough wins",
			args: []string{"l", "u", "m"},
			opts: []string{"passthrough=on", "passthrough=off"},
			want: Options{Lowers: []string{"l"}, Upper: "u", Mountpoint: "m", Cache: fs.Cache{Passthrough: fs.PassthroughOff}},
		},
		{name: "passthrough value", args: []string{"l", "m"}, opts: []string{"passthrough=1"}, wantErr: "want on or off"},
		{name: "metacopy value", args: []string{"l", "m"}, opts: []string{"metacopy=yes"}, wantErr: "want on or off"},
		{name: "unknown option", args: []string{"l", "m"}, opts: []string{"squash_to_root"}, wantErr: `unknown mount option "squash_to_root"`},
		{name: "unknown key", args: []string{"l", "m"}, opts: []string{"uidmapping=0:1:1"}, wantErr: "unknown mount option"},
		{name: "upper twice", args: []string{"l", "u", "m"}, opts: []string{"upperdir=u2"}, wantErr: "upper directory given twice"},
		{name: "too few", args: []string{"l"}, wantErr: "missing arguments"},
		{name: "too many", args: []string{"l", "u", "m", "x"}, wantErr: "too many arguments"},
		{name: "dangling -o", args: []string{"l", "m", "-o"}, wantErr: "-o needs a value"},
		{name: "flag after directories", args: []string{"l", "m", "--debug"}, wantErr: "must come before"},
		{name: "workdir without upper", args: []string{"l", "m"}, opts: []string{"workdir=w"}, wantErr: "without an upper"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var o Options
			err := o.Parse(tc.args, tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("got %v, want error %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(o, tc.want) {
				t.Errorf("got %+v, want %+v", o, tc.want)
			}
		})
	}
}

func TestValidateResolvesAndDerivesWork(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"l", "u", "m"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("l", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	root, err := filepath.EvalSymlinks(root)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		Lowers:     []string{filepath.Join(root, "link")},
		Upper:      filepath.Join(root, "u") + "/",
		Mountpoint: filepath.Join(root, "m", "..", "m"),
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	want := Options{
		Lowers:     []string{filepath.Join(root, "l")},
		Upper:      filepath.Join(root, "u"),
		Work:       filepath.Join(root, ".u.work"),
		Mountpoint: filepath.Join(root, "m"),
	}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("got %+v, want %+v", o, want)
	}
	if _, err := os.Stat(want.Work); err == nil {
		t.Errorf("Validate created the workdir")
	}

	ro := Options{Lowers: []string{filepath.Join(root, "l")}, Upper: filepath.Join(root, "u"),
		Mountpoint: filepath.Join(root, "m"), ReadOnly: true}
	if err := ro.Validate(); err != nil {
		t.Fatal(err)
	}
	if ro.Upper != "" || ro.Work != "" || !reflect.DeepEqual(ro.Lowers, []string{want.Upper, want.Lowers[0]}) {
		t.Errorf("read-only: got %+v, want the upper as top-most lower and no workdir", ro)
	}
}
