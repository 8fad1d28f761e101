package cli

import (
	"strings"
	"testing"

	"github.com/gondolin/gondolin/sessions"
)

func TestPoolLines(t *testing.T) {
	const mib = 1 << 20
	defaultShape := sessions.PoolShape{CPUs: 1, MemoryMiB: 256, Network: true, Ready: 2, RSSBytes: 620 * mib}
	for _, tc := range []struct {
		name string
		pool sessions.PoolStatus
		want []string
	}{
		{
			name: "off",
			pool: sessions.PoolStatus{Size: 0, MemoryMiB: 1024, Shapes: []sessions.PoolShape{}},
			want: []string{"warm pool: off (GONDOLIN_POOL=0 or supervisor --pool 0)"},
		},
		{
			name: "on, nothing warmed yet",
			pool: sessions.PoolStatus{Size: 2, MemoryMiB: 1024},
			want: []string{"warm pool: 0 ready (2 per shape), 0 MiB reserved of 1024 MiB, 0B resident; 0 claims, 0 found it empty"},
		},
		{
			name: "default shape full",
			pool: sessions.PoolStatus{Size: 2, MemoryMiB: 1024, ReservedMiB: 512, RSSBytes: 620 * mib, Claims: 1, Misses: 3,
				Shapes: []sessions.PoolShape{defaultShape}},
			want: []string{
				"warm pool: 2 ready (2 per shape), 512 MiB reserved of 1024 MiB, 620.0MiB resident; 1 claim, 3 found it empty",
				"  default image, 1 CPU, 256 MiB: 2 ready, 0 warming, 620.0MiB resident",
			},
		},
		{
			name: "warming, another shape without network",
			pool: sessions.PoolStatus{Size: 2, MemoryMiB: 1024, ReservedMiB: 1024, RSSBytes: 930 * mib, Claims: 14, Misses: 3,
				Shapes: []sessions.PoolShape{
					defaultShape,
					{Image: "alpine:3.20", CPUs: 2, MemoryMiB: 256, Ready: 1, Warming: 1, RSSBytes: 310 * mib},
				}},
			want: []string{
				"warm pool: 3 ready (2 per shape), 1 warming, 1024 MiB reserved of 1024 MiB, 930.0MiB resident; 14 claims, 3 found it empty",
				"  default image, 1 CPU, 256 MiB: 2 ready, 0 warming, 620.0MiB resident",
				"  alpine:3.20, 2 CPUs, 256 MiB, no network: 1 ready, 1 warming, 310.0MiB resident",
			},
		},
		{
			name: "a shape that fails to warm, its error escaped",
			pool: sessions.PoolStatus{Size: 1, MemoryMiB: 512, Misses: 1,
				Shapes: []sessions.PoolShape{{Image: "evil\x1b]52;c;aGkK\x07", CPUs: 1, MemoryMiB: 512, Network: true,
					Error: "restore: qemu exited:\n\x1b[2Jguest said so"}}},
			want: []string{
				"warm pool: 0 ready (1 per shape), 0 MiB reserved of 512 MiB, 0B resident; 0 claims, 1 found it empty",
				`  evil\x1b]52;c;aGkK\x07, 1 CPU, 512 MiB: 0 ready, 0 warming, 0B resident: last error: restore: qemu exited:\x0a\x1b[2Jguest said so`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := poolLines(tc.pool)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("poolLines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			for _, l := range got {
				if strings.ContainsAny(l, "\x1b\x07\n") {
					t.Errorf("raw control character in %q", l)
				}
			}
		})
	}
}
