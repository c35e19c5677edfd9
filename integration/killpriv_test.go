package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestWriteRemovesPrivileges checks that writing, truncating and opening
// with O_TRUNC remove setuid, setgid and security.capability exactly as on
// ext4 (the oracle), for root and for an unprivileged writer: the daemon
// does this itself, since it tells the kernel it will (HANDLE_KILLPRIV_V2).
func TestWriteRemovesPrivileges(t *testing.T) {
	lowers, upper, mnt, native := privStack(t)
	modes := []uint32{0o4777, 0o2777, 0o2767, 0o6777, 0o0777}
	ways := map[string][]string{
		"write":    {"sh", "-c", `echo x >> "$0"`},
		"truncate": {"truncate", "-s", "1"},
		"otrunc":   {"sh", "-c", `: > "$0"`},
	}
	type key struct{ who, way, name string }
	files := map[key]string{}
	for _, root := range []string{lowers[0], native} {
		for _, who := range []string{"root", "nobody"} {
			for way := range ways {
				for _, m := range modes {
					name := fmt.Sprintf("%s-%s-%o", who, way, m)
					p := filepath.Join(root, name)
					semWrite(t, p, "data\n", 0o777)
					if err := unix.Setxattr(p, "security.capability", fileCap, 0); err != nil {
						t.Skipf("cannot set file capabilities here: %v", err)
					}
					if err := unix.Chmod(p, m); err != nil {
						t.Fatal(err)
					}
					files[key{who, way, name}] = name
				}
			}
		}
	}
	semMount(t, lowers, upper, mnt)
	for k, name := range files {
		for _, root := range []string{native, mnt} {
			args := append(append([]string(nil), ways[k.way]...), filepath.Join(root, name))
			if k.who == "nobody" {
				args = append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}, args...)
			}
			if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%s as %s: %v: %s", args, k.who, err, out)
			}
		}
		if got, want := privState(filepath.Join(mnt, name)), privState(filepath.Join(native, name)); got != want {
			t.Errorf("%s: through the mount %s, on ext4 %s", name, got, want)
		}
	}
}

// TestPrivilegesRegainedAreRemovedAgain checks that a file whose first
// write or truncate found it without privileges, and which then gains
// setuid, setgid or a capability through the mount, loses them again at
// the next write or truncate by another user, as on ext4. The daemon
// remembers a file it found clean and skips the work on later truncates
// and writes; this is what makes it forget.
func TestPrivilegesRegainedAreRemovedAgain(t *testing.T) {
	lowers, upper, mnt, native := privStack(t)
	ways := map[string]string{
		"write":    `echo x >> "$0"`,
		"truncate": `truncate -s 1 "$0"`,
		"otrunc":   `: > "$0"`,
	}
	// How the file regains privileges, through the mount, as root.
	gains := map[string]func(p string) error{
		"setuid":     func(p string) error { return unix.Chmod(p, 0o4777) },
		"setgid":     func(p string) error { return unix.Chmod(p, 0o2777) },
		"capability": func(p string) error { return unix.Setxattr(p, "security.capability", fileCap, 0) },
	}
	for _, root := range []string{lowers[0], native} {
		for way := range ways {
			for gain := range gains {
				semWrite(t, filepath.Join(root, way+"-"+gain), "data\n", 0o777)
			}
		}
	}
	semMount(t, lowers, upper, mnt)
	asNobody := func(script, p string) {
		t.Helper()
		out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", script, p).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s as nobody: %v: %s", script, p, err, out)
		}
	}
	for way, script := range ways {
		for gain, regain := range gains {
			name := way + "-" + gain
			for _, root := range []string{native, mnt} {
				p := filepath.Join(root, name)
				asNobody(script, p) // finds it clean
				if err := regain(p); err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				if got := privState(p); got == "mode 777 cap false" {
					t.Fatalf("%s: %s did not give it privileges: %s", p, gain, got)
				}
				asNobody(script, p) // must remove them
			}
			if got, want := privState(filepath.Join(mnt, name)), privState(filepath.Join(native, name)); got != want {
				t.Errorf("%s: through the mount %s, on ext4 %s", name, got, want)
			} else if want != "mode 777 cap false" {
				t.Errorf("%s: ext4 kept privileges (%s); the oracle is not what this test expects", name, want)
			}
		}
	}
}

// privStack makes a one-lower stack and a plain directory (native, the
// oracle) that an unprivileged writer can reach, for the tests above.
func privStack(t *testing.T) (lowers []string, upper, mnt, native string) {
	t.Helper()
	needRoot(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv not installed")
	}
	lowers, upper, mnt = semStack(t, 1)
	native = t.TempDir()
	for _, d := range []string{filepath.Dir(lowers[0]), native, filepath.Dir(native)} {
		os.Chmod(d, 0o755)
	}
	return lowers, upper, mnt, native
}

// fileCap is a file capability in its on-disk form (VFS_CAP_REVISION_2,
// effective, cap_net_raw permitted).
var fileCap = []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// privState is p's mode bits and whether it has a file capability.
func privState(p string) string {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return err.Error()
	}
	_, err := unix.Getxattr(p, "security.capability", nil)
	return fmt.Sprintf("mode %o cap %v", st.Mode&0o7777, err == nil)
}
