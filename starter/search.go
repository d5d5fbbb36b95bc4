package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/bulkflow/bulkflow/workflows"
)

// startAttributes returns bulkflow's search attributes for a new export if
// the namespace has them registered; otherwise nil and a one-line hint, so
// an export still starts on a server nobody prepared.
func startAttributes(ctx context.Context, c client.Client, namespace string, in workflows.ExportInput, stderr io.Writer) temporal.SearchAttributes {
	resp, err := c.OperatorService().ListSearchAttributes(ctx, &operatorservice.ListSearchAttributesRequest{Namespace: namespace})
	if err != nil {
		return temporal.SearchAttributes{}
	}
	var missing []string
	for _, k := range workflows.SearchAttributeTypes() {
		if _, ok := resp.GetCustomAttributes()[k.GetName()]; !ok {
			missing = append(missing, k.GetName())
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(stderr, "note: search attributes %s are not registered in namespace %s; exports are not searchable by them (see README, \"Temporal UI\", or docs/operations.md)\n",
			strings.Join(missing, ", "), namespace)
		return temporal.SearchAttributes{}
	}
	return workflows.StartSearchAttributes(in)
}

// staticDetails describes an export for the Temporal UI (markdown).
func staticDetails(in workflows.ExportInput) string {
	var b strings.Builder
	fmt.Fprintf(&b, "**Server**: %s  \n**Level**: %s", workflows.ServerLabel(in), in.Level)
	if in.Group != "" {
		fmt.Fprintf(&b, " (Group %s)", in.Group)
	}
	if len(in.Types) > 0 {
		fmt.Fprintf(&b, "  \n**Types**: %s", strings.Join(in.Types, ", "))
	}
	if in.Since != "" {
		fmt.Fprintf(&b, "  \n**Since**: %s", in.Since)
	}
	if in.Incremental {
		b.WriteString("  \n**Incremental**: since the committed watermark")
	}
	if in.Output != "" {
		fmt.Fprintf(&b, "  \n**Output**: %s", in.Output)
	}
	return b.String()
}
