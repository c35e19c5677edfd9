package main

import (
	"math"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median(nil) is not NaN")
	}
	in := []float64{3, 1, 2}
	median(in)
	if in[0] != 3 {
		t.Error("median sorted its argument")
	}
}

func TestFormatNum(t *testing.T) {
	for v, want := range map[float64]string{0.0834: "0.083", 1.234: "1.23", 12.34: "12.3", 2123.4: "2123", math.NaN(): "-"} {
		if got := formatNum(v); got != want {
			t.Errorf("formatNum(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestSlowdown(t *testing.T) {
	um := &cell{vals: []float64{2, 2, 4}}
	k := &cell{vals: []float64{1}}
	if got := slowdown(unitSeconds, um, k); got != 2 {
		t.Errorf("seconds: %v, want 2", got)
	}
	// Rates: unionmount at 500 MB/s against 1000 is 2x slower.
	if got := slowdown(unitMBps, &cell{vals: []float64{500}}, &cell{vals: []float64{1000}}); got != 2 {
		t.Errorf("rate: %v, want 2", got)
	}
	if got := slowdown(unitSeconds, um, nil); !math.IsNaN(got) {
		t.Errorf("missing system: %v, want NaN", got)
	}
}

func TestFormatCell(t *testing.T) {
	if got, want := formatCell(&cell{vals: []float64{0.3, 0.1, 0.2}}), "0.200 (0.100–0.300)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got, want := formatCell(&cell{vals: []float64{1.5}}), "1.50"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got, want := formatCell(&cell{errs: []string{"boom"}}), "error"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestRotate(t *testing.T) {
	s := []string{"a", "b", "c"}
	if got := strings.Join(rotate(s, 4), ""); got != "bca" {
		t.Errorf("rotate by 4 = %q", got)
	}
	if s[0] != "a" {
		t.Error("rotate changed its argument")
	}
}

func TestWriteTable(t *testing.T) {
	systems := []string{sysNative, sysKernel, sysFuseOv, sysUnion}
	r := &row{name: "find_warm", unit: unitSeconds}
	r.cell(sysNative).vals = []float64{0.07}
	r.cell(sysKernel).vals = []float64{0.08, 0.1, 0.09}
	r.cell(sysFuseOv).vals = []float64{0.12}
	c := r.cell(sysUnion)
	c.vals, c.cpu, c.rss = []float64{0.18}, []float64{0.05}, []float64{20, 31}
	var b strings.Builder
	writeTable(&b, systems, []*row{r, {name: "commit", unit: unitSeconds, note: "n/a (not implemented)"}})
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("want header, separator and 2 rows, got:\n%s", b.String())
	}
	for _, l := range lines {
		if utf8.RuneCountInString(l) != utf8.RuneCountInString(lines[0]) {
			t.Errorf("ragged table:\n%s", b.String())
			break
		}
	}
	for _, want := range []string{"| um/kernel |", "---: |", " 0.090 (0.080–0.100) |", " 2.00 |", " 1.50 |", " 31 |", "n/a (not implemented)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	// Without fuse-overlayfs there is no column for it.
	b.Reset()
	writeTable(&b, []string{sysKernel, sysUnion}, []*row{r})
	if strings.Contains(b.String(), "fuse") || strings.Contains(b.String(), "fo CPU") {
		t.Errorf("columns for a system that did not run:\n%s", b.String())
	}
}

func TestParseStatCPU(t *testing.T) {
	// Fields 14 and 15 are 150 and 50 ticks; a name with ") " in it must
	// not shift them.
	stat := "1234 (a) b) S 1 1234 1234 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 8 0 100 0 0"
	got, err := parseStatCPU(stat)
	if err != nil || got != 2 {
		t.Errorf("parseStatCPU = %v, %v; want 2", got, err)
	}
}

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"-quick", "-systems", "overlay,unionmount", "-only", "find_warm"})
	if err != nil {
		t.Fatal(err)
	}
	if c.rounds != 1 || c.bigSize != 64<<20 || strings.Join(c.systems, ",") != "kernel,unionmount" || c.only[0] != "find_warm" {
		t.Errorf("parsed %+v", c)
	}
	if _, err := parseFlags([]string{"-systems", "zfs"}); err == nil {
		t.Error("unknown system accepted")
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/a\040b\134c`); got != `/a b\c` {
		t.Errorf("got %q", got)
	}
}
