package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/vm/agentproto"
)

// newTemplates is a private template directory in the package's home.
func newTemplates(t *testing.T) (*Templates, layout.Home) {
	t.Helper()
	home := testHome(t)
	dir, err := os.MkdirTemp(string(home), "t")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return &Templates{Dir: dir}, home
}

// runTrue runs true in a connected clone.
func runTrue(ctx context.Context, a *Agent) error {
	exit, err := a.Run(ctx, Command{Exec: agentproto.Exec{Argv: []string{"true"}}})
	if err == nil && exit.Code != 0 {
		err = fmt.Errorf("true exited %d", exit.Code)
	}
	return err
}

// TestTemplatePublishedChecked checks what a published template holds: a
// record of its build and of the clone that checked it, and a state saved
// from a parked agent (its clones refuse to run before their setup).
func TestTemplatePublishedChecked(t *testing.T) {
	tmpl, home := newTemplates(t)
	cfg := testConfig(t, home, "pub")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := tmpl.Build(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	list, err := tmpl.List()
	if err != nil || len(list) != 1 {
		t.Fatalf("List = %+v, %v", list, err)
	}
	info := list[0]
	if info.State != TemplateReady || !info.Verified || info.Format != templateFormat || info.StateBytes == 0 || info.SaveMS <= 0 || info.VerifyMS <= 0 {
		t.Fatalf("template record %+v", info)
	}
	leftovers, _ := filepath.Glob(filepath.Join(tmpl.Dir, "*.*"))
	for _, l := range leftovers {
		if !strings.HasSuffix(l, templateLock) {
			t.Errorf("a build left %s", l)
		}
	}
	// A clone restored without a setup is parked: it answers, but runs
	// nothing until the host has reseeded its RNG and set its clock.
	clone := testConfig(t, home, "pub-clone")
	m, err := Start(ctx, withRestore(clone, info.Dir))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	a, err := DialAgent(ctx, clone.path(layout.AgentSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := runTrue(ctx, a); err == nil || !strings.Contains(err.Error(), "setup") {
		t.Fatalf("a clone ran a command before its setup: %v", err)
	}
	if err := a.Setup(ctx, agentproto.Setup{}); err != nil {
		t.Fatal(err)
	}
	if err := runTrue(ctx, a); err != nil {
		t.Fatalf("after setup: %v", err)
	}
}

// withRestore is cfg restoring the template in dir.
func withRestore(cfg Config, dir string) Config {
	cfg.Backing = linkTemplateDisk(filepath.Join(dir, templateDisk), cfg.path(layout.TemplateDisk))
	cfg.BackingFormat = "qcow2"
	cfg.Restore = filepath.Join(dir, templateState)
	return cfg
}

// TestTemplateBrokenMovedAside breaks a template's saved state: the next
// clone fails with the reason at once (not at a deadline), the template is
// moved aside with its reason, a clone made before keeps running, and the
// next clone rebuilds it.
func TestTemplateBrokenMovedAside(t *testing.T) {
	tmpl, home := newTemplates(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	before := testConfig(t, home, "before")
	m0, a0, err := tmpl.Clone(ctx, before, agentproto.Setup{})
	if err != nil {
		t.Fatal(err)
	}
	defer m0.Kill()
	defer a0.Close()
	key := tmpl.Key(before)
	state := filepath.Join(tmpl.Dir, key, templateState)
	st, err := os.Stat(state)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(state, st.Size()/2); err != nil {
		t.Fatal(err)
	}

	_, _, err = tmpl.Clone(ctx, testConfig(t, home, "after"), agentproto.Setup{})
	if !errors.Is(err, ErrTemplateBroken) || !errors.Is(err, ErrExited) {
		t.Fatalf("clone of a truncated template: %v; want ErrTemplateBroken because QEMU exited", err)
	}
	if _, err := os.Stat(filepath.Join(tmpl.Dir, key)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the broken template is still in place: %v", err)
	}
	list, _ := tmpl.List()
	if len(list) != 1 || list[0].State != TemplateBroken || !strings.Contains(list[0].Reason, "qemu exited") {
		t.Fatalf("List after the failure: %+v", list)
	}
	if _, err := os.Stat(filepath.Join(list[0].Dir, cloneConsole)); err != nil {
		t.Errorf("the failed clone's console was not kept: %v", err)
	}
	// The clone made before runs on: its disk is its own link.
	if err := runTrue(ctx, a0); err != nil {
		t.Fatalf("a clone made before the template broke: %v", err)
	}
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", before.path(layout.Disk)).Output()
	if err != nil || !strings.Contains(string(out), before.path(layout.TemplateDisk)) {
		t.Fatalf("the clone's overlay is not backed by its own link: %s %v", out, err)
	}

	m, a, err := tmpl.Clone(ctx, testConfig(t, home, "rebuilt"), agentproto.Setup{})
	if err != nil {
		t.Fatalf("clone after the template broke: %v", err)
	}
	defer m.Kill()
	defer a.Close()
	if err := runTrue(ctx, a); err != nil {
		t.Fatal(err)
	}
	if !tmpl.Ready(before) {
		t.Fatal("the template was not rebuilt")
	}
}

// TestTemplateStress builds templates in many fresh directories, two at a
// time, while a CPU hog takes a core (a loaded CI machine), and restores
// several clones of each: every clone must answer and run a command. It
// is slow: make stress runs it (GONDOLIN_TEST_STRESS=1; N homes with
// GONDOLIN_STRESS_HOMES, default 10).
func TestTemplateStress(t *testing.T) {
	if os.Getenv("GONDOLIN_TEST_STRESS") == "" {
		t.Skip("stress test: run it with make stress")
	}
	home := testHome(t)
	homes, clones := 10, 3
	if n, err := strconv.Atoi(os.Getenv("GONDOLIN_STRESS_HOMES")); err == nil && n > 0 {
		homes = n
	}
	hog := exec.Command("sh", "-c", "while :; do :; done")
	if err := hog.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hog.Process.Kill(); hog.Wait() })

	var (
		mu                 sync.Mutex
		builds, restores   []time.Duration
		answered, attempts int
	)
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	for i := range homes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			dir := filepath.Join(string(home), fmt.Sprintf("s%d", i))
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Error(err)
				return
			}
			defer os.RemoveAll(dir)
			tmpl := &Templates{Dir: filepath.Join(dir, "t")}
			cfg := testConfig(t, home, fmt.Sprintf("s%d/boot", i))
			cfg.Network = true
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			start := time.Now()
			if err := tmpl.Build(ctx, cfg); err != nil {
				t.Errorf("home %d: build: %v", i, err)
				return
			}
			mu.Lock()
			builds = append(builds, time.Since(start))
			mu.Unlock()
			for j := range clones {
				c := testConfig(t, home, fmt.Sprintf("s%d/c%d", i, j))
				c.Network = true
				start := time.Now()
				m, a, err := tmpl.Clone(ctx, c, agentproto.Setup{})
				d := time.Since(start)
				if err == nil {
					err = runTrue(ctx, a)
					a.Close()
					m.Kill()
				}
				mu.Lock()
				attempts++
				if err == nil {
					answered++
					restores = append(restores, d)
				}
				mu.Unlock()
				if err != nil {
					t.Errorf("home %d clone %d: %v", i, j, err)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("%d homes, %d of %d clones answered; builds %s; restores %s", homes, answered, attempts, spread(builds), spread(restores))
}

// spread summarises durations as min/median/max.
func spread(d []time.Duration) string {
	if len(d) == 0 {
		return "-"
	}
	s := slices.Clone(d)
	slices.Sort(s)
	r := func(x time.Duration) time.Duration { return x.Round(time.Millisecond) }
	return fmt.Sprintf("min %v p50 %v max %v", r(s[0]), r(s[len(s)/2]), r(s[len(s)-1]))
}
