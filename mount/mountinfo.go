package mount

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// Name is the FUSE subtype of our mounts; /proc/mounts shows FSType.
const (
	Name   = "unionmount"
	FSType = "fuse." + Name
)

// mountEntry is the part of a /proc/self/mountinfo line we use.
type mountEntry struct {
	fsType string
	source string
}

// lookupMount returns the top-most mount on dir, an absolute path with no
// symlinks, from /proc/self/mountinfo (Linux:
// Documentation/filesystems/proc.rst, "/proc/<pid>/mountinfo").
func lookupMount(dir string) (mountEntry, bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return mountEntry{}, false, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	var found mountEntry
	ok := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - TYPE SOURCE SUPEROPTS
		fields := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(fields) || unescapeOctal(fields[4]) != dir {
			continue
		}
		found = mountEntry{fsType: fields[sep+1], source: unescapeOctal(fields[sep+2])}
		ok = true // later lines are mounted on top of earlier ones
	}
	if err := sc.Err(); err != nil {
		return mountEntry{}, false, fmt.Errorf("read mount table: %w", err)
	}
	return found, ok, nil
}

// unescapeOctal undoes the \ooo escapes the kernel writes for space, tab,
// newline and backslash in mountinfo fields.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }
