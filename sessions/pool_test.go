package sessions

import (
	"testing"
	"time"

	"github.com/gondolin/gondolin/internal/layout"
	"github.com/gondolin/gondolin/vm"
)

func TestPoolOptionsFromEnv(t *testing.T) {
	cases := []struct {
		pool, memory string
		want         PoolOptions
		bad          bool
	}{
		{"", "", PoolOptions{Size: DefaultPoolSize, MemoryMiB: DefaultPoolMemoryMiB}, false},
		{"0", "", PoolOptions{Size: 0, MemoryMiB: DefaultPoolMemoryMiB}, false},
		{"4", "2G", PoolOptions{Size: 4, MemoryMiB: 2048}, false},
		{"-1", "", PoolOptions{}, true},
		{"65", "", PoolOptions{}, true},
		{"two", "", PoolOptions{}, true},
		{"2", "lots", PoolOptions{}, true},
	}
	for _, tc := range cases {
		t.Setenv(layout.EnvPool, tc.pool)
		t.Setenv(layout.EnvPoolMemory, tc.memory)
		got, err := PoolOptionsFromEnv()
		if tc.bad {
			if err == nil {
				t.Errorf("%q %q: no error", tc.pool, tc.memory)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q %q: got %+v, %v; want %+v", tc.pool, tc.memory, got, err, tc.want)
		}
	}
}

// TestPoolNext checks which shape the filler warms next: the default
// first, then the most recently used; never beyond Size per shape or
// the memory bound, never while a claimer boots, never a shape that
// failed within poolRetry or that resolves to nothing.
func TestPoolNext(t *testing.T) {
	now := time.Now()
	shape := func(key string, mem, ready, warming int, used time.Time) *poolShape {
		sh := &poolShape{key: key, cfg: vm.Config{MemoryMiB: mem}, warming: warming, used: used}
		for range ready {
			sh.ready = append(sh.ready, &warmVM{})
		}
		return sh
	}
	cases := []struct {
		name   string
		opts   PoolOptions
		busy   int
		shapes []*poolShape
		want   string // the key warmed next, "" for none
	}{
		{"empty default first", PoolOptions{2, 1024}, 0,
			[]*poolShape{shape("default", 256, 0, 0, time.Time{}), shape("other", 256, 0, 0, now)}, "default"},
		{"default full: most recent other", PoolOptions{2, 2048}, 0,
			[]*poolShape{shape("default", 256, 2, 0, time.Time{}), shape("old", 256, 0, 0, now.Add(-time.Minute)), shape("new", 256, 0, 0, now)}, "new"},
		{"warming counts", PoolOptions{2, 1024}, 0,
			[]*poolShape{shape("default", 256, 1, 1, time.Time{})}, ""},
		{"memory bound", PoolOptions{2, 600}, 0,
			[]*poolShape{shape("default", 256, 2, 0, time.Time{}), shape("big", 512, 0, 0, now)}, ""},
		{"a claimer boots", PoolOptions{2, 1024}, 1,
			[]*poolShape{shape("default", 256, 0, 0, time.Time{})}, ""},
		{"unresolved default", PoolOptions{2, 1024}, 0,
			[]*poolShape{shape("", 256, 0, 0, time.Time{}), shape("other", 256, 0, 0, now)}, "other"},
		{"size zero", PoolOptions{0, 1024}, 0,
			[]*poolShape{shape("default", 256, 0, 0, time.Time{})}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := &Pool{opts: tc.opts, shapes: tc.shapes, busy: tc.busy}
			sh, _ := p.next()
			got := ""
			if sh != nil {
				got = sh.key
				if sh.warming == 0 {
					t.Error("next did not reserve the warming")
				}
			}
			if got != tc.want {
				t.Fatalf("next warms %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("retry later", func(t *testing.T) {
		sh := shape("default", 256, 0, 0, time.Time{})
		sh.retryAt = now.Add(time.Minute)
		p := &Pool{opts: PoolOptions{2, 1024}, shapes: []*poolShape{sh}}
		if got, _ := p.next(); got != nil {
			t.Fatal("a shape that just failed was warmed again")
		}
	})
}

// TestNilPool: a runtime without a pool (exec in its own process)
// claims nothing and reports an empty pool.
func TestNilPool(t *testing.T) {
	var p *Pool
	w, done := p.claim(vm.Config{}, &Spec{})
	done()
	if w != nil {
		t.Fatal("a nil pool gave a VM")
	}
	if st := p.Status(); st.Size != 0 || st.Shapes == nil {
		t.Fatalf("status %+v", st)
	}
	p.Close()
}
