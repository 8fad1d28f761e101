package ui

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"
	"github.com/charmbracelet/x/ansi"
	"github.com/gondolin/gondolin/internal/termsafe"
	"github.com/gondolin/gondolin/sessions"
	"github.com/gondolin/gondolin/vm"
)

// frame is how the screen is divided at the current size.
type frame struct {
	tableRows   int // session rows shown
	previewRows int // preview body rows
}

// fixedRows: title, table header, preview title, status, help bar.
const fixedRows = 5

func (m *Model) layout() frame {
	rest := max(m.height-fixedRows, 0)
	// The table takes what it needs up to 45% of the rest (at least 3
	// rows when there is room); the preview gets the remainder, so it
	// grows with the terminal.
	rows := min(max(len(m.visible), 1), max(3, rest*45/100))
	rows = min(rows, rest)
	return frame{tableRows: rows, previewRows: rest - rows}
}

// View renders the dashboard.
func (m *Model) View() tea.View {
	content := ""
	if !m.quitting {
		content = m.render()
	}
	v := tea.NewView(content)
	v.AltScreen = true
	v.WindowTitle = "gondolin"
	return v
}

// render draws the whole screen as exactly height lines of at most width
// cells; a frame never depends on the previous one, so a resize only
// needs the next render.
func (m *Model) render() string {
	w, h := max(m.width, 20), max(m.height, 3)
	f := m.layout()
	lines := make([]string, 0, h)
	lines = append(lines, m.titleBar(w))
	lines = append(lines, m.tableHeader(w))
	lines = append(lines, m.tableBody(w, f.tableRows)...)
	lines = append(lines, m.previewTitle(w))
	lines = append(lines, m.previewBody(w, f.previewRows)...)
	lines = append(lines, m.statusLine(w), m.helpBar(w))
	for len(lines) < h {
		lines = append(lines, "")
	}
	lines = lines[:h]
	if m.dialog != nil {
		box := m.dialog.view(m, min(w-4, 96), h-2)
		lines = overlay(lines, box, w)
	}
	return strings.Join(lines, "\n")
}

func (m *Model) titleBar(w int) string {
	live := 0
	for _, s := range m.all {
		if s.State == sessions.Live && s.down == "" {
			live++
		}
	}
	left := m.st.title.Render("gondolin") + "  " + plural(len(m.all), "session") + fmt.Sprintf(", %d live", live)
	if q := m.filter.Value(); q != "" && !m.filtering {
		left += fmt.Sprintf("  filter %q: %d shown", q, len(m.visible))
	}
	var right string
	down := 0
	for _, h := range m.hosts {
		if h.unreachable() != "" {
			down++
		}
	}
	switch {
	case m.multi() && down > 0:
		right = m.st.errText.Render(fmt.Sprintf("%d of %d hosts unreachable", down, len(m.hosts)))
	case m.listErr != nil:
		right = m.st.errText.Render("supervisor unreachable")
	case !m.eventsUp && m.eventsNote != "":
		right = m.st.errText.Render("events: reconnecting")
	case !m.eventsUp:
		right = m.st.dim.Render("events: connecting")
	default:
		right = m.st.dim.Render("events: live")
	}
	// The warm pool's indicator, as detailed as fits beside the rest:
	// it gives way to the session counts and a filter's note.
	if m.poolKnown && m.listErr == nil {
		for detail := poolFull; detail <= poolBrief; detail++ {
			text, bad := poolText(m.pool, detail)
			if ansi.StringWidth(left)+1+ansi.StringWidth(text)+2+ansi.StringWidth(right) > w {
				continue
			}
			style := m.st.dim
			if bad {
				style = m.st.errText
			}
			right = style.Render(text) + "  " + right
			break
		}
	}
	return spread(left, right, w)
}

// Detail levels of the pool indicator.
const (
	poolFull  = iota // pool 1/2 +1 warming · 620M
	poolCount        // pool 1/2 +1 warming
	poolBrief        // pool 1/2
)

// poolText is the title bar's warm pool indicator: the default shape's
// ready VMs of the pool's size, those warming, and the resident memory
// of the whole pool, down to detail; "pool off" when the supervisor
// keeps none. bad: the default shape has none ready because warming one
// failed.
func poolText(p sessions.PoolStatus, detail int) (text string, bad bool) {
	if p.Size <= 0 {
		return "pool off", false
	}
	var d sessions.PoolShape
	for _, sh := range p.Shapes {
		if sh.Image == "" && sh.CPUs == vm.DefaultCPUs && sh.MemoryMiB == vm.DefaultMemoryMiB && sh.Network {
			d = sh
			break
		}
	}
	text = fmt.Sprintf("pool %d/%d", d.Ready, p.Size)
	bad = d.Error != "" && d.Ready == 0
	if bad {
		text += " failing"
	}
	if detail <= poolCount && d.Warming > 0 {
		text += fmt.Sprintf(" +%d warming", d.Warming)
	}
	if detail <= poolFull && p.RSSBytes > 0 {
		text += " · " + humanBytes(p.RSSBytes)
	}
	return text, bad
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// spread puts left and right on one line of width w, truncating left.
func spread(left, right string, w int) string {
	rw := ansi.StringWidth(right)
	left = ansi.Truncate(left, max(w-rw-1, 0), "…")
	gap := w - ansi.StringWidth(left) - rw
	if gap < 1 {
		return ansi.Truncate(left, w, "")
	}
	return left + strings.Repeat(" ", gap) + right
}

// column is one table column; the layout drops low-priority columns on
// narrow terminals and gives spare width to the flexible ones.
type column struct {
	title    string
	min, max int // max 0: takes any spare width
	prio     int // higher survives longer
	right    bool
	cut      bool // truncate without an ellipsis (an ID prefix still works)
	multi    bool // shown only when the dashboard shows several hosts
	cell     func(m *Model, r row) string
}

var columns = []column{
	{title: "NAME", min: 8, max: 20, prio: 9, cell: func(_ *Model, r row) string { return dash(r.Name) }},
	{title: "HOST", min: 7, max: 16, prio: 8, multi: true, cell: func(_ *Model, r row) string { return r.host.Name }},
	{title: "ID", min: 8, max: 12, prio: 8, cut: true, cell: func(_ *Model, r row) string { return dash(r.ID) }},
	{title: "STATE", min: 7, max: 0, prio: 10, cell: func(_ *Model, r row) string { return stateText(r) }},
	{title: "IMAGE", min: 10, max: 22, prio: 5, cell: func(_ *Model, r row) string { return r.Image }},
	{title: "UP", min: 4, max: 5, prio: 6, right: true, cell: func(m *Model, r row) string { return unknownIfDown(r, m.uptime) }},
	{title: "CPU", min: 5, max: 5, prio: 4, right: true, cell: func(_ *Model, r row) string { return unknownIfDown(r, cpuText) }},
	{title: "MEM", min: 5, max: 6, prio: 3, right: true, cell: func(_ *Model, r row) string { return unknownIfDown(r, memText) }},
	{title: "PTYS", min: 4, max: 4, prio: 7, right: true, cell: func(_ *Model, r row) string { return ptysText(r.Session) }},
	{title: "POLICY", min: 10, max: 0, prio: 2, cell: func(_ *Model, r row) string { return dash(r.Policy) }},
}

// unknownIfDown is f of r's session, or "-" when its host is
// unreachable: the last known uptime and usage would pass for current.
func unknownIfDown(r row, f func(sessions.Session) string) string {
	if r.down != "" {
		return "-"
	}
	return f(r.Session)
}

const markerWidth = 2 // "> " on the selected row

// colWidths returns the width of each column (0: dropped) for width w.
func (m *Model) colWidths(w int) []int {
	widths := make([]int, len(columns))
	on := make([]bool, len(columns))
	for i, c := range columns {
		on[i] = !c.multi || m.multi()
	}
	need := func() int {
		n := markerWidth
		for i, c := range columns {
			if on[i] {
				n += c.min + 1
			}
		}
		return n
	}
	for need() > w {
		low := -1
		for i, c := range columns {
			// On a tie the later column goes first (ID before HOST).
			if on[i] && (low < 0 || c.prio <= columns[low].prio) {
				low = i
			}
		}
		if low < 0 || columns[low].title == "STATE" {
			break
		}
		on[low] = false
	}
	spare := w - need()
	for i, c := range columns {
		if on[i] {
			widths[i] = c.min
		}
	}
	// Spare width goes to what the rows on screen need, column by
	// column: images, then STATE (a stale session's reason), POLICY,
	// names and full IDs; what is left pads the last column.
	for _, i := range growOrder {
		if !on[i] || spare == 0 {
			continue
		}
		limit := m.contentWidth(i)
		if columns[i].max > 0 {
			limit = min(limit, columns[i].max)
		}
		add := min(max(limit-widths[i], 0), spare)
		widths[i] += add
		spare -= add
	}
	return widths
}

// growOrder lists columns by who gets spare width first.
var growOrder = func() []int {
	var order []int
	for _, title := range []string{"IMAGE", "STATE", "POLICY", "NAME", "HOST", "ID", "UP", "CPU", "MEM", "PTYS"} {
		for i, c := range columns {
			if c.title == title {
				order = append(order, i)
			}
		}
	}
	return order
}()

// contentWidth is the widest cell of column i among the rows on screen
// (at most 40 cells).
func (m *Model) contentWidth(i int) int {
	n := 0
	rows := m.layout().tableRows
	for r := m.offset; r < len(m.visible) && r < m.offset+rows; r++ {
		n = max(n, ansi.StringWidth(columns[i].cell(m, m.all[m.visible[r]])))
	}
	return min(n, 40)
}

func (m *Model) tableHeader(w int) string {
	widths := m.colWidths(w)
	var b strings.Builder
	b.WriteString(strings.Repeat(" ", markerWidth))
	for i, c := range columns {
		if widths[i] == 0 {
			continue
		}
		b.WriteString(fit(c.title, widths[i], c.right))
		b.WriteByte(' ')
	}
	return m.st.header.Render(ansi.Truncate(b.String(), w, ""))
}

func (m *Model) tableBody(w, rows int) []string {
	out := make([]string, 0, rows)
	if !m.loaded && rows > 0 {
		msg := "connecting to the supervisor…"
		if m.listErr != nil {
			msg = "cannot list sessions: " + oneLine(m.listErr.Error())
		}
		out = append(out, ansi.Truncate("  "+msg, w, "…"))
	} else if len(m.visible) == 0 && rows > 0 {
		msg := "  no sessions: n creates one"
		if m.filter.Value() != "" {
			msg = "  no session matches the filter (Esc clears it)"
		}
		out = append(out, m.st.dim.Render(ansi.Truncate(msg, w, "…")))
	}
	widths := m.colWidths(w)
	for r := m.offset; r < len(m.visible) && len(out) < rows; r++ {
		s := m.all[m.visible[r]]
		sel := r == m.cursor
		var b strings.Builder
		if sel {
			b.WriteString("> ")
		} else {
			b.WriteString("  ")
		}
		for i, c := range columns {
			if widths[i] == 0 {
				continue
			}
			text := c.cell(m, s)
			if c.cut {
				text = ansi.Truncate(text, widths[i], "")
			}
			cell := fit(text, widths[i], c.right)
			if c.title == "STATE" && !sel {
				if s.down != "" {
					cell = m.st.errText.Render(cell)
				} else {
					cell = m.st.stateStyle(s.State).Render(cell)
				}
			}
			b.WriteString(cell)
			b.WriteByte(' ')
		}
		line := ansi.Truncate(b.String(), w, "")
		if sel {
			line = m.st.selected.Render(padRight(line, w))
		}
		out = append(out, line)
	}
	for len(out) < rows {
		out = append(out, "")
	}
	return out
}

// fit pads or truncates plain text s to exactly w cells.
func fit(s string, w int, right bool) string {
	if ansi.StringWidth(s) > w {
		return ansi.Truncate(s, w, "…")
	}
	pad := strings.Repeat(" ", w-ansi.StringWidth(s))
	if right {
		return pad + s
	}
	return s + pad
}

func padRight(s string, w int) string {
	if n := ansi.StringWidth(s); n < w {
		return s + strings.Repeat(" ", w-n)
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func stateText(r row) string {
	switch {
	case r.down != "":
		return "unreachable: " + r.down
	case r.placeholder():
		return "connecting…"
	}
	s := r.Session
	if s.State == sessions.Stale && s.Reason != "" {
		return "stale: " + s.Reason
	}
	if s.State == sessions.Creating {
		return "creating: " + orDefault(s.Phase, sessions.PhaseStarting) + "…"
	}
	if s.Phase != "" {
		return string(s.State) + " (" + s.Phase + "…)"
	}
	if len(s.Errors) > 0 {
		return string(s.State) + " (" + s.Errors[0] + ")"
	}
	return string(s.State)
}

func (m *Model) uptime(s sessions.Session) string {
	if s.State != sessions.Live || s.Created.IsZero() {
		return "-"
	}
	return humanDuration(m.opts.Now().Sub(s.Created))
}

func humanDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", max(int(d.Seconds()), 0))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func cpuText(s sessions.Session) string {
	if s.Usage == nil {
		return "-"
	}
	if s.Usage.CPUPercent < 9.95 {
		return fmt.Sprintf("%.1f%%", s.Usage.CPUPercent)
	}
	return fmt.Sprintf("%.0f%%", s.Usage.CPUPercent)
}

func memText(s sessions.Session) string {
	if s.Usage == nil {
		return "-"
	}
	return humanBytes(s.Usage.RSSBytes)
}

func humanBytes(n int64) string {
	const k = 1024
	switch {
	case n < k*k:
		return fmt.Sprintf("%dK", n/k)
	case n < k*k*k:
		return fmt.Sprintf("%dM", n/(k*k))
	}
	return fmt.Sprintf("%.1fG", float64(n)/(k*k*k))
}

func ptysText(s sessions.Session) string {
	return strconv.Itoa(s.RunningPTYs())
}

func (m *Model) previewTitle(w int) string {
	s, ok := m.current()
	if !ok {
		return m.st.border.Render(strings.Repeat("─", w))
	}
	var b strings.Builder
	b.WriteString("── ")
	name := s.displayName()
	if s.host.multi && !s.placeholder() {
		name += " on " + s.host.Name
	}
	b.WriteString(m.st.header.Render(name))
	cur, _ := m.ptyFor(s)
	for i, p := range s.PTYs {
		label := strconv.Itoa(i+1) + ":" + ptyLabel(p)
		if p.ID == cur.ID {
			b.WriteString(" " + m.st.focused.Render("["+label+"]"))
		} else {
			b.WriteString(" " + m.st.dim.Render(label))
		}
	}
	b.WriteString(" ")
	left := ansi.Truncate(b.String(), w, "…")
	n := w - ansi.StringWidth(left)
	return left + m.st.border.Render(strings.Repeat("─", max(n, 0)))
}

// ptyLabel names a terminal by its command, and says when it has exited.
func ptyLabel(p sessions.PTY) string {
	name := "shell" // the session's default command
	if len(p.Argv) > 0 {
		name = p.Argv[0]
		if i := strings.LastIndexByte(name, '/'); i >= 0 {
			name = name[i+1:]
		}
	}
	if !p.Running {
		if p.ExitCode != nil {
			return fmt.Sprintf("%s(exit %d)", name, *p.ExitCode)
		}
		return name + "(exited)"
	}
	return name
}

func (m *Model) previewBody(w, rows int) []string {
	if rows <= 0 {
		return nil
	}
	out := make([]string, 0, rows)
	s, ok := m.current()
	switch {
	case !ok && m.loaded && len(m.all) == 0:
		out = append(out, "",
			"  No sessions yet.",
			"",
			"  n          create one here",
			"  ?          every key",
			"",
			"  From a shell: gondolin bash --detach --name NAME")
	case !ok:
	case s.down != "":
		out = append(out, m.st.errText.Render(fmt.Sprintf("  host %s is unreachable: %s", s.host.Name, s.down)),
			m.st.dim.Render("  shown as last listed; the dashboard keeps trying (gondolin --context "+s.host.Name+" supervisor status tells more)"))
	case s.placeholder():
		out = append(out, m.st.dim.Render("  connecting to host "+s.host.Name+"…"))
	case s.State == sessions.Creating:
		out = append(out, m.st.stateStyle(sessions.Creating).Render(fmt.Sprintf("  creating: %s… it turns live once its VM is up",
			orDefault(s.Phase, sessions.PhaseStarting))))
	case s.State == sessions.Stale:
		out = append(out, m.st.stateStyle(sessions.Stale).Render(fmt.Sprintf("  stale: %s; d removes it (its VM is gone or does not answer)", dash(s.Reason))))
	case s.State == sessions.Stopped:
		out = append(out, m.st.stateStyle(sessions.Stopped).Render("  stopped; d removes it"))
	case len(s.PTYs) == 0:
		out = append(out, "  no terminal: c opens a shell")
	}
	if ok && s.down == "" && m.preview.session == s.key() && len(out) < rows {
		if m.preview.err != nil {
			if s.State == sessions.Live {
				out = append(out, m.st.errText.Render("  cannot read the screen: "+oneLine(m.preview.err.Error())))
			}
		} else {
			out = append(out, cropScreen(m.preview, w, rows-len(out))...)
		}
	}
	for i := range out {
		out[i] = ansi.Truncate(out[i], w, "")
	}
	for len(out) < rows {
		out = append(out, "")
	}
	return out[:rows]
}

// screenLines splits a screen into styled rows (the plain text when the
// styled rendering does not have one row per line).
func screenLines(s sessions.Screen) []string {
	plain := strings.Split(strings.ReplaceAll(s.Text, "\r\n", "\n"), "\n")
	// An emulator's screen has no tabs, but a stray one would break the
	// width arithmetic of every line around it; and no control character
	// of the guest's may reach the user's terminal.
	for i, l := range plain {
		plain[i] = termsafe.String(strings.ReplaceAll(l, "\t", " "))
	}
	// The styled rendering keeps colours only: a hyperlink (OSC 8) or any
	// other sequence the guest's screen holds would act on the terminal.
	styled := strings.Split(strings.ReplaceAll(termsafe.StyleOnly(s.ANSI), "\r\n", "\n"), "\n")
	if s.ANSI == "" || len(styled) != len(plain) {
		return plain
	}
	// Each row ends with a reset, so a style never bleeds into the
	// dashboard around the preview.
	for i := range styled {
		if strings.Contains(styled[i], "\x1b") {
			styled[i] += "\x1b[m"
		}
	}
	return styled
}

// cropScreen picks the rows of a terminal's screen that fit in rows:
// the bottom of the used part, so the prompt and the latest output stay
// in view as on the terminal itself.
func cropScreen(p preview, w, rows int) []string {
	if rows <= 0 || len(p.lines) == 0 {
		return nil
	}
	plain := strings.Split(strings.ReplaceAll(p.screen.Text, "\r\n", "\n"), "\n")
	last := min(p.screen.Cursor[0], len(p.lines)-1) // Cursor is [row, col]
	for i := len(plain) - 1; i > last; i-- {
		if strings.TrimSpace(plain[i]) != "" {
			last = i
			break
		}
	}
	last = max(last, 0)
	start := max(0, last-rows+1)
	end := min(len(p.lines), start+rows)
	out := make([]string, 0, end-start)
	for _, l := range p.lines[start:end] {
		out = append(out, ansi.Truncate(l, w, ""))
	}
	return out
}

func (m *Model) statusLine(w int) string {
	if m.filtering {
		m.filter.SetWidth(max(w-4, 1))
		return ansi.Truncate(m.filter.View(), w, "")
	}
	if m.status != "" {
		if m.statusErr {
			return m.st.errText.Render(ansi.Truncate("error: "+m.status, w, "…"))
		}
		return ansi.Truncate(m.status, w, "…")
	}
	if m.templateNote != "" {
		return m.st.errText.Render(ansi.Truncate(m.templateNote, w, "…"))
	}
	if s, ok := m.current(); ok && s.Label != "" {
		return m.st.dim.Render(ansi.Truncate("label: "+s.Label, w, "…"))
	}
	return ""
}

// helpBar lists the main keys that fit; "? help" and "q quit" always
// show, at the right.
func (m *Model) helpBar(w int) string {
	item := func(k binding) string { return m.st.key.Render(k.keys) + " " + m.st.dim.Render(k.help) }
	right := item(binding{"?", "help"}) + "  " + item(binding{"q", "quit"})
	avail := w - ansi.StringWidth(right) - 2
	var b strings.Builder
	used := 0
	for _, k := range shortHelp {
		n := len(k.keys) + 1 + len(k.help) + 2
		if used+n > avail {
			break
		}
		b.WriteString(item(k) + "  ")
		used += n
	}
	return spread(strings.TrimRight(b.String(), " "), right, w)
}

// overlay draws box (a multi-line string) centred over lines.
func overlay(lines []string, box string, w int) []string {
	rows := strings.Split(box, "\n")
	bw := lipgloss.Width(box)
	x := max((w-bw)/2, 0)
	y := max((len(lines)-len(rows))/2, 0)
	for i, r := range rows {
		if y+i >= len(lines) {
			break
		}
		base := padRight(lines[y+i], w)
		left := ansi.Truncate(base, x, "")
		right := ansi.TruncateLeft(base, x+bw, "")
		lines[y+i] = left + "\x1b[m" + r + "\x1b[m" + right
	}
	return lines
}
