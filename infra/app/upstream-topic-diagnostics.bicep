// The upstream system topic's delivery failures into the gate's Log Analytics workspace, deployed
// into the topic's resource group. A module of its own, not part of upstream-topic.bicep: the
// monitoring module (which creates the workspace) waits for the topic for its dead-letter alert,
// so the topic module cannot wait for the workspace.
// Diagnostic settings are an extension resource (`scope:` the resource they watch), type and
// properties as in Bicep's types for Microsoft.Insights/diagnosticSettings@2021-05-01-preview
// (Azure/bicep-types-az, generated/monitor/microsoft.insights/2021-05-01-preview/types.md).
// logAnalyticsDestinationType 'Dedicated' writes each category to its own resource-specific table
// instead of AzureDiagnostics (same types.md: "Possible values are: Dedicated and null").
//
// Category DeliveryFailures: every failed delivery attempt of an event subscription, with its
// reason, in table AegDeliveryFailureLogs (learn.microsoft.com/azure/azure-monitor/reference/
// supported-logs/microsoft-eventgrid-systemtopics-logs). The dead-letter metric alert says that
// an event was given up on; this says why each attempt before it failed.

@description('Name of the upstream registry\'s system topic (in this resource group).')
param topicName string

@description('Resource id of the Log Analytics workspace the delivery failures go to.')
param workspaceId string

resource topic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: topicName
}

resource deliveryFailures 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'gate-audit'
  scope: topic
  properties: {
    workspaceId: workspaceId
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        category: 'DeliveryFailures'
        enabled: true
      }
    ]
  }
}
