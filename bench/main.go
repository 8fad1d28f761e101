// Command bench measures gondolin and prints one table per capability,
// each figure next to the raw limit measured in the same run (a bare QEMU
// boot of the same kernel, the same work done without gondolin).
//
//	go run ./bench [-runs 10] [-gondolin bin/gondolin]
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/internal/testenv"
)

var (
	runs        = flag.Int("runs", 10, "runs per timed figure")
	gondolinBin = flag.String("gondolin", "bin/gondolin", "gondolin binary to measure")
	only        = flag.String("only", "", "run only the sections whose name contains this")
)

// section is one capability's measurements.
type section struct {
	name string
	run  func(env *env) []row
}

var sections = []section{
	{"foundation: boot and exec", benchFoundation},
}

// env is what every section shares: a private home with the default
// image linked in.
type env struct {
	home layout.Home
	bin  string
}

func main() {
	flag.Parse()
	bin, err := filepath.Abs(*gondolinBin)
	if err != nil {
		fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		fatal(fmt.Errorf("%s not found: run make first", bin))
	}
	src, err := layout.DefaultHome()
	if err != nil {
		fatal(err)
	}
	dir, err := os.MkdirTemp("", "gdbench")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(dir)
	e := &env{home: layout.Home(dir), bin: bin}
	if err := testenv.LinkImages(src, e.home); err != nil {
		fatal(fmt.Errorf("link images from %s (run make image): %w", src, err))
	}
	fmt.Printf("gondolin bench, %s, %d runs per figure, %s\n\n", time.Now().Format("2006-01-02 15:04"), *runs, hostInfo())
	for _, s := range sections {
		if *only != "" && !strings.Contains(s.name, *only) {
			continue
		}
		fmt.Printf("## %s\n\n", s.name)
		printTable(s.run(e))
		fmt.Println()
	}
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "bench: %v\n", err)
	os.Exit(1)
}

func hostInfo() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	model := ""
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "model name") {
			_, model, _ = strings.Cut(line, ":")
			break
		}
	}
	return strings.TrimSpace(model)
}

// row is one line of a table: a figure, and the limit it is compared to.
type row struct {
	what  string
	value string
	limit string
	ratio string
}

func printTable(rows []row) {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "measure\tgondolin\traw limit\tratio")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.what, r.value, r.limit, r.ratio)
	}
	w.Flush()
}

// durations summarises timings.
type durations []time.Duration

func (d durations) pct(p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append(durations(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

func (d durations) String() string {
	return fmt.Sprintf("p50 %s  p90 %s", ms(d.pct(0.5)), ms(d.pct(0.9)))
}

func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%dms", d.Milliseconds())
}

func ratio(a, b time.Duration) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", float64(a)/float64(b))
}

func timeN(n int, f func() error) (durations, error) {
	var d durations
	for range n {
		start := time.Now()
		if err := f(); err != nil {
			return d, err
		}
		d = append(d, time.Since(start))
	}
	return d, nil
}
