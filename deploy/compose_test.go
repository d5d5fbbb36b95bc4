package deploy

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/bulkflow/bulkflow/internal/servers"
	"github.com/bulkflow/bulkflow/workflows"
)

// repoRoot is where docker-compose.yml and the Dockerfile live.
const repoRoot = ".."

// loadProject loads ../docker-compose.yml the way `docker compose` does,
// with schema validation and the consistency check on, but hermetically: no
// OS environment and no .env file, so the result does not depend on the
// machine that runs the test.
func loadProject(t *testing.T) *types.Project {
	t.Helper()
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cli.NewProjectOptions(
		[]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root),
		cli.WithEnv(nil),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatalf("service %q: %v", name, err)
	}
	return s
}

func TestComposeServices(t *testing.T) {
	p := loadProject(t)
	want := []string{"postgresql", "temporal-schema", "temporal", "temporal-setup", "temporal-ui", "fhirserver", "worker"}
	got := p.ServiceNames()
	for _, name := range want {
		if !slices.Contains(got, name) {
			t.Errorf("service %q missing; services are %v", name, got)
		}
	}
}

func TestComposeBuild(t *testing.T) {
	p := loadProject(t)
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"worker", "fhirserver"} {
		t.Run(name, func(t *testing.T) {
			s := service(t, p, name)
			if s.Build == nil {
				t.Fatal("no build section")
			}
			if s.Build.Context != root {
				t.Errorf("build context = %q, want the repo root %q", s.Build.Context, root)
			}
			dockerfile := s.Build.Dockerfile
			if dockerfile == "" {
				dockerfile = "Dockerfile"
			}
			if !filepath.IsAbs(dockerfile) {
				dockerfile = filepath.Join(s.Build.Context, dockerfile)
			}
			if _, err := os.Stat(dockerfile); err != nil {
				t.Errorf("Dockerfile: %v", err)
			}
		})
	}
}

func TestComposeFhirserverEntrypoint(t *testing.T) {
	s := service(t, loadProject(t), "fhirserver")
	if want := []string{"/usr/local/bin/fhirserver"}; !slices.Equal(s.Entrypoint, want) {
		t.Errorf("entrypoint = %q, want %q", s.Entrypoint, want)
	}
	// The server must listen on all interfaces to be reachable from the
	// worker container and the published port.
	i := slices.Index(s.Command, "-addr")
	if i < 0 || i+1 >= len(s.Command) || s.Command[i+1] != "0.0.0.0:9090" {
		t.Errorf("command = %q, want -addr 0.0.0.0:9090", s.Command)
	}
}

func TestComposeDependsOn(t *testing.T) {
	p := loadProject(t)
	tests := []struct {
		service, on, condition string
	}{
		{"temporal-schema", "postgresql", types.ServiceConditionHealthy},
		{"temporal", "temporal-schema", types.ServiceConditionCompletedSuccessfully},
		{"temporal-setup", "temporal", types.ServiceConditionHealthy},
		{"temporal-ui", "temporal", types.ServiceConditionHealthy},
		{"worker", "temporal-setup", types.ServiceConditionCompletedSuccessfully},
		{"worker", "fhirserver", types.ServiceConditionHealthy},
	}
	for _, tc := range tests {
		t.Run(tc.service+"->"+tc.on, func(t *testing.T) {
			dep, ok := service(t, p, tc.service).DependsOn[tc.on]
			if !ok {
				t.Fatalf("%s does not depend on %s", tc.service, tc.on)
			}
			if dep.Condition != tc.condition {
				t.Errorf("condition = %q, want %q", dep.Condition, tc.condition)
			}
		})
	}
	if hc := service(t, p, "postgresql").HealthCheck; hc == nil || len(hc.Test) == 0 || hc.Disable {
		t.Error("postgresql has no healthcheck, so service_healthy would never be reached")
	}
}

func TestComposeEnvironment(t *testing.T) {
	p := loadProject(t)
	tests := []struct {
		service, key, want string
	}{
		{"worker", "TEMPORAL_ADDRESS", "temporal:7233"},
		{"worker", "TEMPORAL_NAMESPACE", "default"},
		{"worker", "BULKFLOW_TASK_QUEUE", "fhir-bulk-export"},
		{"worker", "BULKFLOW_OUTPUT", "/data/out"},
		{"worker", "BULKFLOW_SERVERS", "/etc/bulkflow/servers.json"},
		{"worker", "BULKFLOW_METRICS_ADDR", ":9464"},
		{"temporal", "DB", "postgres12"},
		{"temporal", "DB_PORT", "5432"},
		{"temporal", "POSTGRES_SEEDS", "postgresql"},
		{"temporal-ui", "TEMPORAL_ADDRESS", "temporal:7233"},
		{"temporal-ui", "TEMPORAL_CORS_ORIGINS", "http://localhost:8080"},
	}
	for _, tc := range tests {
		t.Run(tc.service+"/"+tc.key, func(t *testing.T) {
			v, ok := service(t, p, tc.service).Environment[tc.key]
			if !ok || v == nil {
				t.Fatalf("%s is not set", tc.key)
			}
			if *v != tc.want {
				t.Errorf("%s = %q, want %q", tc.key, *v, tc.want)
			}
		})
	}
}

func TestComposePorts(t *testing.T) {
	p := loadProject(t)
	tests := []struct {
		service   string
		published string
		target    uint32
	}{
		{"temporal", "7233", 7233},
		{"temporal-ui", "8080", 8080},
		{"fhirserver", "9090", 9090},
		{"worker", "9464", 9464}, // Prometheus /metrics (BULKFLOW_METRICS_ADDR)
	}
	for _, tc := range tests {
		t.Run(tc.service, func(t *testing.T) {
			ports := service(t, p, tc.service).Ports
			for _, port := range ports {
				if port.Published == tc.published && port.Target == tc.target {
					return
				}
			}
			t.Errorf("no %s:%d mapping in %+v", tc.published, tc.target, ports)
		})
	}
}

func TestComposeVolumes(t *testing.T) {
	p := loadProject(t)
	for name, s := range p.Services {
		for _, v := range s.Volumes {
			switch v.Type {
			case types.VolumeTypeVolume:
				if v.Source == "" {
					continue // anonymous volume
				}
				if _, ok := p.Volumes[v.Source]; !ok {
					t.Errorf("service %s mounts volume %q, which is not declared under volumes:", name, v.Source)
				}
			case types.VolumeTypeBind:
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("service %s binds %q: %v", name, v.Source, err)
				}
			}
		}
	}

	// The worker's two mounts: the read-only registry and the output volume.
	w := service(t, p, "worker")
	mounts := map[string]types.ServiceVolumeConfig{}
	for _, v := range w.Volumes {
		mounts[v.Target] = v
	}
	if m, ok := mounts["/etc/bulkflow/servers.json"]; !ok || m.Type != types.VolumeTypeBind || !m.ReadOnly {
		t.Errorf("worker: want servers.json bind-mounted read-only, got %+v", m)
	}
	if m, ok := mounts["/data/out"]; !ok || m.Type != types.VolumeTypeVolume || m.Source != "bulkflow-data" {
		t.Errorf("worker: want named volume bulkflow-data at /data/out, got %+v", m)
	}
}

func TestServersFiles(t *testing.T) {
	for _, file := range []string{"servers.json", "servers.example.json"} {
		t.Run(file, func(t *testing.T) {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var f struct {
				Servers []map[string]any `json:"servers"`
			}
			if err := json.Unmarshal(b, &f); err != nil {
				t.Fatalf("not JSON: %v", err)
			}
			if len(f.Servers) == 0 {
				t.Fatal(`no "servers" entries`)
			}
			for i, s := range f.Servers {
				for _, key := range []string{"name", "baseURL"} {
					if v, _ := s[key].(string); v == "" {
						t.Errorf("servers[%d]: %q missing or empty", i, key)
					}
				}
			}
			// The worker's own loader: unknown fields, auth and TLS
			// consistency, durations. It reads no secret.
			if _, err := servers.Load(file); err != nil {
				t.Errorf("worker rejects it: %v", err)
			}
		})
	}
}

// TestServersJSONMatchesCompose: the registry names the compose service by
// its in-network host and the port fhirserver listens on.
func TestServersJSONMatchesCompose(t *testing.T) {
	b, err := os.ReadFile("servers.json")
	if err != nil {
		t.Fatal(err)
	}
	var f servers.File
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	const want = "http://fhirserver:9090/fhir"
	for _, s := range f.Servers {
		if s.BaseURL == want {
			return
		}
	}
	t.Errorf("no server with baseURL %s in servers.json", want)
}

// §6: every image is pinned to a version tag: a floating one (latest, 16,
// 1.26) moves under an existing volume or build without anyone deciding it.
func TestComposeImagesPinned(t *testing.T) {
	pinned := regexp.MustCompile(`:[0-9]+\.[0-9]+(\.[0-9]+)?(-[a-z0-9.-]+)?$`)
	for name, s := range loadProject(t).Services {
		if s.Image == "" {
			continue // built from the Dockerfile
		}
		if !pinned.MatchString(s.Image) {
			t.Errorf("service %s: image %q is not pinned to a version tag", name, s.Image)
		}
	}
	df := readFile(t, filepath.Join(repoRoot, "Dockerfile"))
	gomod := readFile(t, filepath.Join(repoRoot, "go.mod"))
	goVersion := regexp.MustCompile(`(?m)^go ([0-9.]+)$`).FindStringSubmatch(gomod)
	if goVersion == nil || !strings.Contains(df, "FROM golang:"+goVersion[1]+" ") {
		t.Errorf("the Dockerfile's golang image is not pinned to go.mod's Go version %v", goVersion)
	}
}

// §6: Temporal as the Temporal project sets it up today: temporalio/server
// with the schema migrated by admin-tools (auto-setup is deprecated), and
// bulkflow's search attributes registered before the worker starts.
func TestComposeTemporalSetup(t *testing.T) {
	p := loadProject(t)
	for name, s := range p.Services {
		if strings.Contains(s.Image, "auto-setup") {
			t.Errorf("service %s uses the deprecated auto-setup image", name)
		}
	}
	if img := service(t, p, "temporal").Image; !strings.HasPrefix(img, "temporalio/server:") {
		t.Errorf("temporal image %q, want temporalio/server", img)
	}
	server := strings.TrimPrefix(service(t, p, "temporal").Image, "temporalio/server:")
	for _, tool := range []string{"temporal-schema", "temporal-setup"} {
		if img := service(t, p, tool).Image; img != "temporalio/admin-tools:"+server {
			t.Errorf("%s image %q, want temporalio/admin-tools:%s (the server's version)", tool, img, server)
		}
	}
	script := readFile(t, "temporal/setup-namespace.sh")
	for name, v := range workflows.SearchAttributesToRegister().GetUntypedValues() {
		typ := map[string]string{"KEYWORD": "Keyword", "KEYWORD_LIST": "KeywordList", "TEXT": "Text", "INT": "Int", "DATETIME": "Datetime", "BOOL": "Bool", "DOUBLE": "Double"}[strings.TrimPrefix(name.GetValueType().String(), "INDEXED_VALUE_TYPE_")]
		_ = v
		if !strings.Contains(script, name.GetName()+":"+typ) {
			t.Errorf("setup-namespace.sh does not register %s as %s", name.GetName(), typ)
		}
	}
	if !strings.Contains(readFile(t, "temporal/setup-schema.sh"), "update-schema") {
		t.Error("setup-schema.sh does not migrate the schema")
	}
}

// §6: every long-running service has a healthcheck, and the worker's and
// fhirserver's probe what they serve with a binary their image has.
func TestComposeHealthchecks(t *testing.T) {
	p := loadProject(t)
	oneShot := map[string]bool{"temporal-schema": true, "temporal-setup": true}
	for name, s := range p.Services {
		if oneShot[name] {
			continue
		}
		if s.HealthCheck == nil || len(s.HealthCheck.Test) == 0 || s.HealthCheck.Disable {
			t.Errorf("service %s has no healthcheck", name)
		}
	}
	for name, url := range map[string]string{"worker": "http://localhost:9464/healthz", "fhirserver": "http://localhost:9090/fhir/metadata"} {
		want := []string{"CMD", "/usr/local/bin/worker", "-probe", url}
		if got := service(t, p, name).HealthCheck.Test; !slices.Equal(got, want) {
			t.Errorf("%s healthcheck %q, want %q", name, got, want)
		}
	}
}

// §6: the UI is the version the docs' screenshots show.
func TestComposeUIVersionMatchesDocs(t *testing.T) {
	m := regexp.MustCompile(`Temporal UI ([0-9]+\.[0-9]+\.[0-9]+)`).FindStringSubmatch(readFile(t, filepath.Join(repoRoot, "docs", "architecture.md")))
	if m == nil {
		t.Fatal("docs/architecture.md names no Temporal UI version")
	}
	if img := service(t, loadProject(t), "temporal-ui").Image; img != "temporalio/ui:"+m[1] {
		t.Errorf("temporal-ui image %q, the screenshots show %s", img, m[1])
	}
}

// §6: the Dockerfile's build stage builds, with the same flags, the
// binaries `go build` builds, and the final stage copies each of them.
func TestDockerfileBuildsTheBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	df := strings.ReplaceAll(readFile(t, filepath.Join(repoRoot, "Dockerfile")), "\\\n", " ")
	m := regexp.MustCompile(`CGO_ENABLED=0 go build (-trimpath -ldflags="-s -w") -o /out/\s+((?:\./[^\s]+\s*)+)`).FindStringSubmatch(df)
	if m == nil {
		t.Fatal("no `CGO_ENABLED=0 go build ... -o /out/ PKGS` in the Dockerfile")
	}
	pkgs := strings.Fields(m[2])
	out := t.TempDir()
	// Without -trimpath/-ldflags (checked above as text) the build shares
	// the cache of every other build: seconds, not minutes.
	cmd := exec.Command("go", append([]string{"build", "-o", out + "/"}, pkgs...)...)
	cmd.Dir = repoRoot
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %v: %v\n%s", pkgs, err, b)
	}
	for _, want := range []string{"worker", "starter", "fhirserver"} {
		if _, err := os.Stat(filepath.Join(out, want)); err != nil {
			t.Errorf("the Dockerfile's build does not produce %s", want)
		}
		if !strings.Contains(df, "/out/"+want) || !regexp.MustCompile(`COPY --from=build [^\n]*/out/`+want).MatchString(df) {
			t.Errorf("the final stage does not copy /out/%s", want)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
