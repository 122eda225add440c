// The Function app (function_app.py) on the Flex Consumption plan, Linux, Python.
//
// Flex Consumption takes the runtime from functionAppConfig (not FUNCTIONS_WORKER_RUNTIME) and
// pulls the code package from a blob container with the app's identity. Every connection is
// identity-based: the app settings carry names, endpoints and a client id, never a key.

param name string
param planName string
param location string
param tags object = {}

@description('Resource id of the user-assigned identity the app runs as.')
param identityId string

@description('Client id of that identity (AZURE_CLIENT_ID and the identity-based connections).')
param identityClientId string

param storageAccountName string

@description('Blob container of the Flex deployment package (in storageAccountName).')
param deploymentContainerName string

param applicationInsightsName string

@description('The gate\'s own app settings (GATE_*), merged over the platform settings below.')
param appSettings object

// functionAppConfig.runtime is {name, version} in Microsoft.Web/sites@2025-03-01; Flex runs
// Python 3.13 (Azure/azure-functions-python-worker#1588), with the worker the app ships itself
// (azure-functions-runtime in requirements.txt: learn.microsoft.com/azure/azure-functions/
// python-313-changes).
@allowed([
  '3.13' // the app requires Python 3.13 (pyproject.toml requires-python)
])
param pythonVersion string = '3.13'

// main.bicep derives the next three from its maxConcurrentTaskRuns budget (docs/deploy.md,
// "Concurrency budget"); the defaults are that derivation at the default budget, 25.
@description('Upper bound of instances the app may scale out to (a cap, not a reservation; Flex Consumption takes 1-1000).')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 4

@description('Queue messages gate_worker fetches at once per instance (host.json extensions.queues.batchSize, overridden by app setting).')
@minValue(1)
@maxValue(32)
param queueBatchSize int = 4

@description('Messages left in progress at which an instance fetches the next batch (host.json extensions.queues.newBatchThreshold, overridden by app setting; at most queueBatchSize).')
@minValue(1)
param queueNewBatchThreshold int = 2

@description('Flex Consumption always-ready instances: [{name, instanceCount}], name a group (http, durable, blob) or function:<name>. Empty: none, every instance is on demand.')
param alwaysReady array = []

@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Application (client) id of the gate\'s Microsoft Entra app registration (app roles Gate.Read, Gate.Operate). Empty: no App Service authentication, function keys only.')
param authClientId string = ''

@description('Directory (tenant) id of that app registration; empty: this deployment\'s tenant.')
param authTenantId string = ''

@description('Application ID URI of that app registration, the resource operators get tokens for; empty: api://<authClientId>.')
param authApplicationIdUri string = ''

var authEnabled = !empty(authClientId)
var authTenant = empty(authTenantId) ? tenant().tenantId : authTenantId

resource storage 'Microsoft.Storage/storageAccounts@2025-08-01' existing = {
  name: storageAccountName
}

resource insights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// The settings of the platform rather than of the gate. AzureWebJobsStorage is the connection the
// queue bindings name (gate.config.app_settings.STORAGE_CONNECTION); its __ form is the identity-based one.
var platformSettings = {
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: insights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  AZURE_CLIENT_ID: identityClientId
  // override host.json's queue batch (functions-host-json, "Override host.json values": the
  // setting is AzureFunctionsJobHost__ and the path with __ between its parts)
  AzureFunctionsJobHost__extensions__queues__batchSize: string(queueBatchSize)
  AzureFunctionsJobHost__extensions__queues__newBatchThreshold: string(queueNewBatchThreshold)
}

resource plan 'Microsoft.Web/serverfarms@2025-03-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2025-03-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        alwaysReady: alwaysReady
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }

  resource settings 'config' = {
    name: 'appsettings'
    properties: union(platformSettings, appSettings)
  }
}

// App Service authentication with Microsoft Entra ID in front of the HTTP API (main.bicep sets
// GATE_AUTH_MODE=entra with it, from the same parameter). Properties as in
// Microsoft.Web/sites/config authsettingsV2 (Bicep types; tests/unit/test_infra_auth.py checks them
// against the SDK's SiteAuthSettingsV2):
// - an unauthenticated call gets 401, not a login redirect: callers are tools with tokens;
// - the issuer is <login endpoint>/<tenant>/v2.0; the client id is "always implicitly" an
//   allowed audience (a v2 token's aud), and the Application ID URI is added for tokens asked
//   for by it (learn.microsoft.com/azure/app-service/configure-authentication-provider-aad,
//   "Issuer Url", "Allowed Token Audiences");
// - the platform checks the token, not app roles: the functions do (gate/entrypoints/principal.py);
// - /runtime/webhooks/eventgrid is excluded: Event Grid delivers to the Event Grid trigger
//   there with the extension's system key, which the Functions host checks itself
//   (learn.microsoft.com/azure/azure-functions/event-grid-how-tos, "Webhook endpoint URL";
//   Azure/azure-functions-host#1659), and Event Grid cannot present an Entra token to an
//   AzureFunction destination (learn.microsoft.com/azure/event-grid/security-authentication:
//   an Entra-protected function takes the generic webhook approach instead). Queue and timer
//   triggers do not come in over HTTP: authentication does not touch them.
// A top-level resource with parent: (not nested in site) so that pycep, which keeps only one
// nested resource per parent, sees both configs.
resource auth 'Microsoft.Web/sites/config@2025-03-01' = if (authEnabled) {
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'Return401'
      excludedPaths: [
        '/runtime/webhooks/eventgrid'
      ]
    }
    httpSettings: {
      requireHttps: true
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: authClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${authTenant}/v2.0'
        }
        validation: {
          allowedAudiences: [
            empty(authApplicationIdUri) ? 'api://${authClientId}' : authApplicationIdUri
          ]
        }
      }
    }
  }
}

output id string = site.id
output name string = site.name
output uri string = 'https://${site.properties.defaultHostName}'
output authEnabled bool = authEnabled
