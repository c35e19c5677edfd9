package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// Units of a workload's metric. Rates are better when higher; seconds when
// lower.
const (
	unitSeconds = "s"
	unitMBps    = "MB/s"
	unitIOPS    = "IOPS"
)

func higherIsBetter(unit string) bool { return unit == unitMBps || unit == unitIOPS }

// cell holds every sample of one workload on one system.
type cell struct {
	vals []float64 // the metric, one per sample
	cpu  []float64 // daemon CPU seconds over the timed part, one per sample
	rss  []float64 // daemon peak RSS in MB, one per sample
	errs []string  // samples that failed
}

// row is one workload's line of the table.
type row struct {
	name, unit string
	note       string // replaces the measurements, e.g. "n/a (not implemented)"
	cells      map[string]*cell
}

func (r *row) cell(sys string) *cell {
	if r.cells == nil {
		r.cells = map[string]*cell{}
	}
	c := r.cells[sys]
	if c == nil {
		c = &cell{}
		r.cells[sys] = c
	}
	return c
}

// median returns the median of vs, the mean of the middle two for an even
// count, and NaN for none.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// formatNum prints a metric with about three significant digits.
func formatNum(v float64) string {
	a := math.Abs(v)
	switch {
	case math.IsNaN(v):
		return "-"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// formatCell is "median (min-max)", or just the value for one sample.
func formatCell(c *cell) string {
	if c == nil {
		return ""
	}
	if len(c.vals) == 0 {
		if len(c.errs) > 0 {
			return "error"
		}
		return ""
	}
	s := formatNum(median(c.vals))
	if len(c.vals) > 1 {
		s += fmt.Sprintf(" (%s–%s)", formatNum(slices.Min(c.vals)), formatNum(slices.Max(c.vals)))
	}
	if len(c.errs) > 0 {
		s += fmt.Sprintf(" +%d err", len(c.errs))
	}
	return s
}

// slowdown is how many times slower a is than b on this unit's metric
// (>1: a is slower), from the medians; NaN when either is missing.
func slowdown(unit string, a, b *cell) float64 {
	if a == nil || b == nil || len(a.vals) == 0 || len(b.vals) == 0 {
		return math.NaN()
	}
	ma, mb := median(a.vals), median(b.vals)
	if higherIsBetter(unit) {
		ma, mb = mb, ma
	}
	if mb == 0 {
		return math.NaN()
	}
	return ma / mb
}

func formatRatio(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

// Names of the systems, as in -systems.
const (
	sysNative = "native"
	sysKernel = "kernel"
	sysFuseOv = "fuse-overlayfs"
	sysUnion  = "unionmount"
)

// tableColumns lists the table's header: workload, unit, one column per
// system, then ratios and daemon columns for the systems present.
func tableColumns(systems []string) []string {
	cols := []string{"workload", "unit"}
	cols = append(cols, systems...)
	has := func(s string) bool { return slices.Contains(systems, s) }
	if has(sysUnion) && has(sysKernel) {
		cols = append(cols, "um/kernel")
	}
	if has(sysUnion) && has(sysFuseOv) {
		cols = append(cols, "um/fuse-ovl")
	}
	if has(sysUnion) {
		cols = append(cols, "um CPU s", "um RSS MB")
	}
	if has(sysFuseOv) {
		cols = append(cols, "fo CPU s")
	}
	return cols
}

// tableRow formats one row in the order of tableColumns.
func tableRow(systems []string, r *row) []string {
	out := []string{r.name, r.unit}
	has := func(s string) bool { return slices.Contains(systems, s) }
	if r.note != "" {
		out = append(out, r.note)
		for len(out) < len(tableColumns(systems)) {
			out = append(out, "")
		}
		return out
	}
	for _, s := range systems {
		out = append(out, formatCell(r.cells[s]))
	}
	um := r.cells[sysUnion]
	if has(sysUnion) && has(sysKernel) {
		out = append(out, formatRatio(slowdown(r.unit, um, r.cells[sysKernel])))
	}
	if has(sysUnion) && has(sysFuseOv) {
		out = append(out, formatRatio(slowdown(r.unit, um, r.cells[sysFuseOv])))
	}
	daemon := func(c *cell) (cpu, rss string) {
		if c == nil || len(c.cpu) == 0 {
			return "-", "-"
		}
		return formatNum(median(c.cpu)), fmt.Sprintf("%.0f", slices.Max(c.rss))
	}
	if has(sysUnion) {
		cpu, rss := daemon(um)
		out = append(out, cpu, rss)
	}
	if has(sysFuseOv) {
		cpu, _ := daemon(r.cells[sysFuseOv])
		out = append(out, cpu)
	}
	return out
}

// writeMarkdown writes a Markdown table with padded columns; every column
// but the first is right-aligned.
func writeMarkdown(w io.Writer, header []string, rows [][]string) {
	width := make([]int, len(header))
	for i, h := range header {
		width[i] = len([]rune(h))
	}
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range cells {
			pad := strings.Repeat(" ", width[i]-len([]rune(c)))
			if i == 0 {
				b.WriteString(" " + c + pad + " |")
			} else {
				b.WriteString(" " + pad + c + " |")
			}
		}
		fmt.Fprintln(w, b.String())
	}
	line(header)
	sep := make([]string, len(header))
	for i := range header {
		if i == 0 {
			sep[i] = strings.Repeat("-", width[i])
		} else {
			sep[i] = strings.Repeat("-", width[i]-1) + ":"
		}
	}
	line(sep)
	for _, r := range rows {
		line(r)
	}
}

// writeTable writes the results table for the systems that ran.
func writeTable(w io.Writer, systems []string, rows []*row) {
	var out [][]string
	for _, r := range rows {
		out = append(out, tableRow(systems, r))
	}
	writeMarkdown(w, tableColumns(systems), out)
}
