// Application Insights (workspace-based) for the gate's logs, including its GATE_DECISION lines.
// Local authentication is off: telemetry is accepted only with an Entra token of an identity that
// holds Monitoring Metrics Publisher, so the connection string in the app settings is no secret.

param workspaceName string
param applicationInsightsName string
param location string
param tags object = {}

@description('Days the Log Analytics workspace keeps data.')
param retentionInDays int = 30

resource workspace 'Microsoft.OperationalInsights/workspaces@2025-07-01' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
  }
}

output id string = insights.id
output name string = insights.name
